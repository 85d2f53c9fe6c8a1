//! Noising and attention masks of block-diffusion training (LLaDA2.0's recipe).
//!
//! A training sequence of length L is fed as `[noisy x_t | clean x_0]`, 2L tokens, both
//! halves with positions 0..L-1. With blocks of size B:
//! - a noisy token sees its own noisy block and the clean blocks strictly before it;
//! - a clean token sees the clean blocks up to and including its own (block-causal).
//!
//! Packed documents add: a token sees only tokens of its own document. Block size 1 is
//! autoregressive training (each noisy token sees the clean tokens before it); block
//! size L is plain masked diffusion over the whole sequence.

use rand::Rng;

/// Whether query `q` may attend to key `k` in the 2L layout (`len` = L).
pub fn block_diffusion_visible(q: usize, k: usize, len: usize, block: usize) -> bool {
    let (q_noisy, k_noisy) = (q < len, k < len);
    let (qp, kp) = (q % len, k % len);
    let (qb, kb) = (qp / block, kp / block);
    match (q_noisy, k_noisy) {
        (true, true) => qb == kb,
        (true, false) => kb < qb,
        (false, true) => false,
        (false, false) => kb <= qb,
    }
}

/// Additive mask `[2L, 2L]` (0 visible, -inf hidden), row-major. `doc_ids` (length L),
/// when given, also hides tokens of other packed documents.
pub fn block_diffusion_mask(len: usize, block: usize, doc_ids: Option<&[u32]>) -> Vec<f32> {
    assert!(block > 0 && len > 0, "block and length must be positive");
    let n = 2 * len;
    let mut mask = vec![f32::NEG_INFINITY; n * n];
    for q in 0..n {
        for k in 0..n {
            let same_doc = doc_ids.is_none_or(|d| d[q % len] == d[k % len]);
            if same_doc && block_diffusion_visible(q, k, len, block) {
                mask[q * n + k] = 0.0;
            }
        }
    }
    mask
}

/// A noised sequence: the noisy half's tokens and which positions the loss covers.
#[derive(Debug, Clone, PartialEq)]
pub struct Noised {
    pub tokens: Vec<u32>,
    /// Positions whose clean token the loss asks for: the masked ones, and after
    /// [`corrupt_visible`] the visible answer positions too.
    pub masked: Vec<bool>,
    /// The mask rate used.
    pub t: f32,
}

/// Masks each position of `clean` with probability `t`, never a `protected` one (the
/// prompt in SFT). At least one position is masked when any may be, so every example
/// contributes to the loss.
pub fn mask_tokens(
    clean: &[u32],
    t: f32,
    mask_id: u32,
    protected: Option<&[bool]>,
    rng: &mut impl Rng,
) -> Noised {
    let may_mask = |i: usize| protected.is_none_or(|p| !p[i]);
    let mut masked: Vec<bool> = (0..clean.len())
        .map(|i| may_mask(i) && rng.random::<f32>() < t)
        .collect();
    if !masked.contains(&true) {
        let candidates: Vec<usize> = (0..clean.len()).filter(|&i| may_mask(i)).collect();
        if !candidates.is_empty() {
            masked[candidates[rng.random_range(0..candidates.len())]] = true;
        }
    }
    let tokens = clean
        .iter()
        .zip(&masked)
        .map(|(&tok, &m)| if m { mask_id } else { tok })
        .collect();
    Noised { tokens, masked, t }
}

/// The complementary view of a noising (SFT's complementary masking): positions that
/// were kept are masked and vice versa, protected positions staying clean.
pub fn complement(
    clean: &[u32],
    noised: &Noised,
    mask_id: u32,
    protected: Option<&[bool]>,
) -> Noised {
    let masked: Vec<bool> = noised
        .masked
        .iter()
        .enumerate()
        .map(|(i, &m)| !m && protected.is_none_or(|p| !p[i]))
        .collect();
    let tokens = clean
        .iter()
        .zip(&masked)
        .map(|(&tok, &m)| if m { mask_id } else { tok })
        .collect();
    Noised {
        tokens,
        masked,
        t: 1.0 - noised.t,
    }
}

/// LLaDA2.1-style editing data: every visible (not masked, not protected) position of
/// `noised` joins the loss, and with probability `rate` shows another token of the same
/// sequence's unprotected part instead of its own (a plausible wrong token, as a
/// decoder's mistakes are; a random vocabulary id would be trivially spotted). The
/// model so learns to keep right tokens and to replace wrong ones.
pub fn corrupt_visible(
    noised: &mut Noised,
    clean: &[u32],
    protected: &[bool],
    rate: f64,
    rng: &mut impl Rng,
) {
    let pool: Vec<u32> = (0..clean.len())
        .filter(|&i| !protected[i])
        .map(|i| clean[i])
        .collect();
    for i in 0..clean.len() {
        if protected[i] || noised.masked[i] {
            continue;
        }
        noised.masked[i] = true;
        if rng.random_bool(rate) {
            let others: Vec<u32> = pool.iter().copied().filter(|&t| t != clean[i]).collect();
            if let Some(&t) = others.get(rng.random_range(0..others.len().max(1))) {
                noised.tokens[i] = t;
            }
        }
    }
}

/// Mask rate t ~ U(eps, 1) for pre-training (clipped away from 0: the loss weight is 1/t).
pub fn sample_t(rng: &mut impl Rng, eps: f32) -> f32 {
    eps + (1.0 - eps) * rng.random::<f32>()
}

/// Mask rate t ~ U[lo, hi] (SFT uses [0.3, 0.8]).
pub fn sample_t_between(rng: &mut impl Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.random::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn visible(len: usize, block: usize) -> Vec<Vec<bool>> {
        let m = block_diffusion_mask(len, block, None);
        let n = 2 * len;
        (0..n)
            .map(|q| (0..n).map(|k| m[q * n + k] == 0.0).collect())
            .collect()
    }

    #[test]
    fn noisy_sees_own_block_and_earlier_clean_blocks() {
        // L = 4, B = 2: noisy 0..4, clean 4..8.
        let v = visible(4, 2);
        // noisy position 2 (block 1): noisy 2,3 and clean 0,1 (positions 4,5).
        assert_eq!(v[2], [false, false, true, true, true, true, false, false]);
        // noisy position 0 (block 0): noisy 0,1 only.
        assert_eq!(v[0], [true, true, false, false, false, false, false, false]);
        // clean position 2 (index 6): clean blocks 0 and 1, no noisy token.
        assert_eq!(v[6], [false, false, false, false, true, true, true, true]);
        // clean position 0 (index 4): its own clean block.
        assert_eq!(v[4], [false, false, false, false, true, true, false, false]);
    }

    #[test]
    fn block_one_is_autoregressive_and_block_len_is_full_diffusion() {
        let v = visible(3, 1);
        // noisy token i sees itself and the clean tokens before it: next-token prediction
        // of x_i from x_<i with only a mask at i.
        assert_eq!(v[1], [false, true, false, true, false, false]);
        let v = visible(3, 3);
        assert_eq!(v[0], [true, true, true, false, false, false]);
    }

    #[test]
    fn packed_documents_do_not_see_each_other() {
        let docs = [0, 0, 1, 1];
        let m = block_diffusion_mask(4, 4, Some(&docs));
        let n = 8;
        let vis = |q: usize, k: usize| m[q * n + k] == 0.0;
        assert!(vis(0, 1) && !vis(0, 2) && vis(2, 3) && !vis(3, 1));
        assert!(vis(6, 7) && !vis(6, 4));
    }

    #[test]
    fn masking_respects_rate_protection_and_complement() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let clean: Vec<u32> = (0..1000).map(|i| i % 50).collect();
        let n = mask_tokens(&clean, 0.3, 99, None, &mut rng);
        let rate = n.masked.iter().filter(|&&m| m).count() as f32 / 1000.0;
        assert!((rate - 0.3).abs() < 0.05, "{rate}");
        assert!(n
            .tokens
            .iter()
            .zip(&n.masked)
            .all(|(&t, &m)| (t == 99) == m));

        let protected: Vec<bool> = (0..1000).map(|i| i < 400).collect();
        let n = mask_tokens(&clean, 0.9, 99, Some(&protected), &mut rng);
        assert!(n.masked[..400].iter().all(|&m| !m));
        let c = complement(&clean, &n, 99, Some(&protected));
        assert!(c.masked[..400].iter().all(|&m| !m));
        assert!((400..1000).all(|i| n.masked[i] != c.masked[i]));

        // A tiny rate still masks one position.
        let n = mask_tokens(&[1, 2, 3], 0.0, 99, None, &mut rng);
        assert_eq!(n.masked.iter().filter(|&&m| m).count(), 1);
    }

    #[test]
    fn editing_corrupts_visible_answer_tokens_and_supervises_them() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let clean: Vec<u32> = (0..400).map(|i| 10 + i % 7).collect();
        let protected: Vec<bool> = (0..400).map(|i| i < 100).collect();
        let noised = mask_tokens(&clean, 0.5, 99, Some(&protected), &mut rng);
        let mut edited = noised.clone();
        corrupt_visible(&mut edited, &clean, &protected, 0.2, &mut rng);
        // The prompt is untouched and outside the loss; every answer position is in it.
        assert_eq!(edited.tokens[..100], clean[..100]);
        assert!(edited.masked[..100].iter().all(|&m| !m));
        assert!(edited.masked[100..].iter().all(|&m| m));
        // Masked positions stay masked; about a fifth of the visible ones changed, each
        // to another token of the answer.
        let visible: Vec<usize> = (100..400).filter(|&i| !noised.masked[i]).collect();
        let changed: Vec<usize> = visible
            .iter()
            .copied()
            .filter(|&i| edited.tokens[i] != clean[i])
            .collect();
        assert!((100..400).all(|i| !noised.masked[i] || edited.tokens[i] == 99));
        let share = changed.len() as f64 / visible.len() as f64;
        assert!((0.1..0.3).contains(&share), "{share}");
        assert!(changed
            .iter()
            .all(|&i| (10..17).contains(&edited.tokens[i])));
    }

    #[test]
    fn mask_rates_stay_in_range() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for _ in 0..1000 {
            let t = sample_t(&mut rng, 1e-3);
            assert!((1e-3..=1.0).contains(&t));
            let s = sample_t_between(&mut rng, 0.3, 0.8);
            assert!((0.3..=0.8).contains(&s));
        }
    }
}
