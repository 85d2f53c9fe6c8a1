//! Model architectures, one file each, with tensor names as in the HF checkpoints.

pub mod llada2;

pub use llada2::{Llada2Model, SeqStep};
