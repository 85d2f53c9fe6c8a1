//! Model architectures, one file each, with tensor names as in the HF checkpoints.

pub mod llada2;

pub use llada2::{ForwardCost, Llada2Model, SeqStep, TrainRow};
