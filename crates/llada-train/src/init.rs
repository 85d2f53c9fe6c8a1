//! Random initialisation of a new model: normal(0, std) matrices and embeddings, unit
//! norms, zero expert bias; deterministic for a seed and tensor name.

use candle_core::{Device, Tensor};
use llada::WeightSource;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n` samples of N(0, std²), deterministic for `seed` (Box-Muller on ChaCha8).
pub fn gaussian(n: usize, std: f32, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
            let u2: f32 = rng.random();
            std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect()
}

pub struct InitSource {
    device: Device,
    seed: u64,
    std: f32,
}

impl InitSource {
    pub fn new(seed: u64, std: f32) -> Self {
        Self {
            device: Device::Cpu,
            seed,
            std,
        }
    }
}

impl WeightSource for InitSource {
    fn device(&self) -> &Device {
        &self.device
    }

    fn contains(&self, _name: &str) -> bool {
        true
    }

    fn get_optional(&self, name: &str, shape: &[usize]) -> llada::Result<Option<Tensor>> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else if name.ends_with("expert_bias") {
            vec![0.0; n]
        } else {
            let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
            });
            gaussian(n, self.std, hash ^ self.seed)
        };
        Ok(Some(Tensor::from_vec(data, shape, &self.device)?))
    }

    fn missing(&self, name: &str) -> llada::Error {
        llada::Error::InvalidRequest(format!("cannot initialise {name}"))
    }
}
