//! Checkpoint merging: the parameter average of the k checkpoints with the lowest
//! validation loss (LLaDA2.0 merges its best checkpoints this way).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::params::save_weights;
use crate::{Result, TrainError};

/// Averages the weights of `checkpoints` into `out` (with the first one's config and
/// tokenizer files). Every checkpoint must hold the same tensors and shapes.
pub fn average(checkpoints: &[PathBuf], out: &Path) -> Result<()> {
    let Some(first) = checkpoints.first() else {
        return Err(TrainError::Invalid("no checkpoints to merge".into()));
    };
    let mut sum: HashMap<String, Tensor> = HashMap::new();
    for dir in checkpoints {
        let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)?;
        if !sum.is_empty() && tensors.len() != sum.len() {
            return Err(TrainError::Invalid(format!(
                "{} has {} tensors, the first checkpoint {}",
                dir.display(),
                tensors.len(),
                sum.len()
            )));
        }
        for (name, t) in tensors {
            let t = t.to_dtype(candle_core::DType::F32)?;
            let acc = match sum.remove(&name) {
                None if checkpoints.len() > 1 && dir != first => {
                    return Err(TrainError::Invalid(format!(
                        "{} lacks {name}",
                        first.display()
                    )))
                }
                None => t,
                Some(acc) => (acc + t).map_err(|e| {
                    TrainError::Invalid(format!("{name} in {}: {e}", dir.display()))
                })?,
            };
            sum.insert(name, acc);
        }
    }
    let n = checkpoints.len() as f64;
    let mean = sum
        .into_iter()
        .map(|(k, v)| Ok((k, (v / n)?)))
        .collect::<candle_core::Result<HashMap<_, _>>>()?;
    save_weights(out, &mean)?;
    llada::files::copy_companion_files(first, out)?;
    Ok(())
}

/// The `k` checkpoints with the lowest `score` (validation loss), best first.
pub fn top_k(scored: &[(PathBuf, f64)], k: usize) -> Vec<PathBuf> {
    let mut sorted: Vec<&(PathBuf, f64)> = scored.iter().collect();
    sorted.sort_by(|a, b| a.1.total_cmp(&b.1));
    sorted.into_iter().take(k).map(|(p, _)| p.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_weights_and_picks_the_best() {
        let tmp = tempfile::tempdir().unwrap();
        let mk = |name: &str, v: f32| {
            let dir = tmp.path().join(name);
            let t = Tensor::full(v, (2, 3), &Device::Cpu).unwrap();
            save_weights(&dir, &HashMap::from([("w".to_string(), t)])).unwrap();
            std::fs::write(dir.join("config.json"), "{}").unwrap();
            dir
        };
        let (a, b, c) = (mk("a", 1.0), mk("b", 3.0), mk("c", 100.0));
        let best = top_k(&[(a.clone(), 0.5), (c.clone(), 9.0), (b.clone(), 0.7)], 2);
        assert_eq!(best, vec![a.clone(), b.clone()]);
        let out = tmp.path().join("merged");
        average(&best, &out).unwrap();
        let m =
            candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
        assert_eq!(m["w"].to_vec2::<f32>().unwrap(), vec![vec![2.0; 3]; 2]);
        assert!(out.join("config.json").is_file());
        assert!(average(&[], &out).is_err());
    }
}
