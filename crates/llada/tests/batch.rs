//! Batched decoding: several generations advanced by shared forward passes must give the
//! reference's answers, whatever joins or leaves the batch.

use llada_testing as common;

use common::{generate_cases, load_fixture};
use llada::{run_batch, step_batch, Generation};

#[test]
fn all_golden_cases_decoded_together_match_the_reference() {
    let loaded = load_fixture();
    let cases = generate_cases(&loaded);
    let mut gens: Vec<Generation> = cases
        .iter()
        .map(|c| Generation::new(&loaded.model, &c.prompt, c.params.clone()).unwrap())
        .collect();
    let mut streamed = vec![Vec::new(); gens.len()];
    let before = loaded.model.cost().sequence_passes as usize;
    let passes = run_batch(&loaded.model, &mut gens, &mut |i, ids| {
        streamed[i].extend_from_slice(ids)
    })
    .unwrap();
    let most_steps = cases.iter().map(|c| c.denoising_forwards).max().unwrap();
    assert_eq!(
        passes, most_steps,
        "the batch runs as long as its longest member"
    );
    let mut forwards = 0;
    for (i, (g, case)) in gens.into_iter().zip(&cases).enumerate() {
        let out = g.finish();
        assert_eq!(out.ids, case.output_ids, "case {i}: answer");
        assert_eq!(
            out.stats.denoising_steps, case.denoising_forwards,
            "case {i}: steps"
        );
        // The cache's commits ride on denoising passes: no pass of its own.
        assert_eq!(out.stats.forwards, case.denoising_forwards, "case {i}");
        forwards += out.stats.forwards;
        let expected_stream: Vec<u32> = match out.ids.iter().position(|&t| t == case.params.eos_id)
        {
            Some(eos) => out.ids[..=eos].to_vec(),
            None => out.ids.clone(),
        };
        assert_eq!(streamed[i], expected_stream, "case {i}: streamed commits");
    }
    assert_eq!(
        loaded.model.cost().sequence_passes as usize - before,
        forwards,
        "sequences the model ran vs forwards counted in the statistics"
    );
}

#[test]
fn members_may_join_late_and_leave_early() {
    let loaded = load_fixture();
    let cases = generate_cases(&loaded);
    let (first, second) = (&cases[0], &cases[1]);
    let mut a = Generation::new(&loaded.model, &first.prompt, first.params.clone()).unwrap();
    let mut b = Generation::new(&loaded.model, &second.prompt, second.params.clone()).unwrap();
    // `a` runs alone for two steps, then `b` joins; `a` is dropped from the batch list
    // as soon as it finishes while `b` goes on.
    for _ in 0..2 {
        step_batch(&loaded.model, &mut [&mut a], &mut |_, _| {}).unwrap();
    }
    while !(a.is_finished() && b.is_finished()) {
        let mut batch: Vec<&mut Generation> = Vec::new();
        if !a.is_finished() {
            batch.push(&mut a);
        }
        batch.push(&mut b);
        step_batch(&loaded.model, &mut batch, &mut |_, _| {}).unwrap();
    }
    assert_eq!(a.finish().ids, first.output_ids);
    assert_eq!(b.finish().ids, second.output_ids);
}

#[test]
fn approximate_block_caching_decodes_the_same_in_a_batch_as_alone() {
    // Partial passes (a subset of a block's rows) and full passes of other members share
    // forward passes; each member must get what it gets alone.
    let loaded = load_fixture();
    let cases = generate_cases(&loaded);
    let params = |i: usize| {
        let mut p = cases[i].params.clone();
        p.block_cache = llada::BlockCache::Dual { refresh: 0 };
        p
    };
    let alone: Vec<Vec<u32>> = (0..cases.len())
        .map(|i| {
            llada::generate(&loaded.model, &cases[i].prompt, &params(i), &mut |_| {})
                .unwrap()
                .ids
        })
        .collect();
    let mut gens: Vec<Generation> = (0..cases.len())
        .map(|i| Generation::new(&loaded.model, &cases[i].prompt, params(i)).unwrap())
        .collect();
    run_batch(&loaded.model, &mut gens, &mut |_, _| {}).unwrap();
    for (i, (g, want)) in gens.into_iter().zip(&alone).enumerate() {
        assert_eq!(&g.finish().ids, want, "case {i}");
    }
}
