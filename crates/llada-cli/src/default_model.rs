//! The default model, compiled into the binary: `llada chat` works anywhere the binary
//! is copied or installed, with nothing beside it. It is `models/default` of the
//! repository (trained by its committed recipe, bf16, about 4 MB).

use llada::EmbeddedModel;

macro_rules! model_file {
    ($name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/default/",
            $name
        ))
    };
}

pub static DEFAULT_MODEL: EmbeddedModel = EmbeddedModel {
    name: "default model (embedded)",
    config: model_file!("config.json"),
    generation_config: Some(model_file!("generation_config.json")),
    weights: include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/default/model.safetensors"
    )),
    tokenizer: Some(model_file!("tokenizer.json")),
    tokenizer_config: Some(model_file!("tokenizer_config.json")),
};
