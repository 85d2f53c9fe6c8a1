//! `llada train tokenizer`: a byte-level BPE (the `tokenizers` trainer) with the special
//! tokens a LLaDA2 model needs, saved with a `tokenizer_config.json` whose chat template
//! is the LLaDA2 format, so the folder works with llada and with transformers.

use std::path::{Path, PathBuf};

use llada::tokenizer::{DEFAULT_EOS_TOKEN, FALLBACK_TEMPLATE, MASK_TOKEN, ROLE_END_TOKEN};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::{Result, TrainError};

/// Special tokens in id order: EOS is 0, the mask 1, `<|role_end|>` 2.
pub const SPECIAL_TOKENS: &[&str] = &[
    DEFAULT_EOS_TOKEN,
    MASK_TOKEN,
    ROLE_END_TOKEN,
    "<role>",
    "</role>",
];

#[derive(Debug, Clone)]
pub struct TokenizerTraining {
    pub vocab_size: usize,
    pub min_frequency: u64,
    /// Every digit its own piece (see `pre_tokenizer`); false keeps GPT-2's whole
    /// numbers (the earlier default model's tokenizer).
    pub split_digits: bool,
}

impl Default for TokenizerTraining {
    fn default() -> Self {
        Self {
            vocab_size: 4096,
            min_frequency: 2,
            split_digits: true,
        }
    }
}

/// Byte-level pre-tokenization with every digit its own piece (a space stays with the
/// digit after it, " 47" -> " 4", "7"), as LLaMA and Qwen split numbers: with whole
/// numbers as tokens ("Ġ47") the first default model learned addition as a lookup table
/// and added 7 of 41 held-out pairs correctly; digit by digit, carries can be learned.
fn pre_tokenizer(split_digits: bool) -> Result<PreTokenizerWrapper> {
    let byte_level = PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
    if !split_digits {
        return Ok(byte_level);
    }
    let digits = Split::new(
        SplitPattern::Regex(r" ?\p{N}".into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| TrainError::Tokenizer(e.to_string()))?;
    Ok(PreTokenizerWrapper::Sequence(Sequence::new(vec![
        PreTokenizerWrapper::Split(digits),
        byte_level,
    ])))
}

/// Trains on the text `files` and writes `tokenizer.json` and `tokenizer_config.json`
/// into `out`.
pub fn train_tokenizer(files: &[PathBuf], opts: &TokenizerTraining, out: &Path) -> Result<()> {
    let floor = 256 + SPECIAL_TOKENS.len();
    if opts.vocab_size < floor {
        return Err(TrainError::Invalid(format!(
            "vocab size {} is below the {floor} byte-level symbols and special tokens",
            opts.vocab_size
        )));
    }
    if files.is_empty() {
        return Err(TrainError::Invalid("no training text given".into()));
    }
    for f in files {
        let meta = std::fs::metadata(f).map_err(|source| TrainError::Read {
            path: f.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(TrainError::Invalid(format!(
                "{} is not a file",
                f.display()
            )));
        }
    }
    let specials: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .map(|t| AddedToken::from(t.to_string(), true))
        .collect();
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(opts.vocab_size)
        .min_frequency(opts.min_frequency)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    let mut tok = tokenizers::Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(pre_tokenizer(opts.split_digits)?));
    tok.with_decoder(Some(ByteLevel::default()));
    let paths: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    tok.train_from_files(&mut trainer, paths)
        .map_err(|e| TrainError::Tokenizer(e.to_string()))?;

    std::fs::create_dir_all(out).map_err(|source| TrainError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let json = tok
        .to_string(true)
        .map_err(|e| TrainError::Tokenizer(e.to_string()))?;
    llada::files::write_atomic(&out.join("tokenizer.json"), json.as_bytes())?;
    let config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": DEFAULT_EOS_TOKEN,
        "pad_token": DEFAULT_EOS_TOKEN,
        "mask_token": MASK_TOKEN,
        "additional_special_tokens": &SPECIAL_TOKENS[2..],
        "chat_template": FALLBACK_TEMPLATE,
        "clean_up_tokenization_spaces": false,
    });
    let text = serde_json::to_string_pretty(&config).expect("static JSON");
    Ok(llada::files::write_atomic(
        &out.join("tokenizer_config.json"),
        text.as_bytes(),
    )?)
}
