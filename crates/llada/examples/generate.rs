//! Load a model folder, turn a question into a chat prompt, and stream the answer as
//! block diffusion unmasks it: the library's whole path in one file.
//!
//! ```sh
//! cargo run --release -p llada --example generate -- models/default "Reverse: 1 2 3"
//! ```

use std::io::Write;
use std::path::PathBuf;

use llada::{generate, load_model, Message};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(question)) = (args.next(), args.next()) else {
        return Err("usage: generate MODEL_DIR QUESTION".into());
    };

    // A folder in Hugging Face layout: config.json, weights, tokenizer.json.
    let loaded = load_model(&PathBuf::from(dir))?;
    let tokenizer = loaded
        .tokenizer
        .as_ref()
        .ok_or("the model folder has no tokenizer.json")?;

    // The model's chat template turns the question into prompt ids.
    let prompt = tokenizer.encode_chat(&[Message::new("user", question)], true)?;

    // The model's special ids and the reference settings (block 32, threshold 0.95,
    // greedy); change any field before generating.
    let mut params = loaded.default_params();
    params.gen_length = 64;

    // Tokens arrive once they are final, left to right; the stream turns them into text
    // without splitting a UTF-8 character.
    let mut text = tokenizer.stream_decoder(true);
    let mut stdout = std::io::stdout();
    let out = generate(&loaded.model, &prompt, &params, &mut |ids| {
        if let Ok(piece) = text.push(ids) {
            let _ = write!(stdout, "{piece}");
            let _ = stdout.flush();
        }
    })?;
    let s = out.stats;
    println!();
    eprintln!(
        "{} tokens in {} forward passes ({:.2} tokens per forward), {:.1} tokens/s",
        s.tokens,
        s.forwards,
        s.tokens_per_forward(),
        s.tokens_per_second()
    );
    Ok(())
}
