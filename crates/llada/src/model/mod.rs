//! Model architectures, one file each, with tensor names as in the HF checkpoints.

mod llada2;

pub use llada2::{is_linear_weight, Llada2, Llada2Model};
