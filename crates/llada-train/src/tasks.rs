//! A generated task set whose answers can be checked: addition, copying, reversing,
//! sorting and comparing, as chat examples (`{"messages": [...]}` lines). Used for SFT
//! of the default model and for `llada eval`'s accuracy.
//!
//! Held-out items are disjoint from training items by construction, whatever the seeds:
//! every question belongs to exactly one [`Split`], decided by a fixed hash of its text,
//! and a split's generator only keeps questions of its own split.

use std::path::Path;

use llada::Message;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Result, TrainError};

const WORDS: &[&str] = &[
    "red", "blue", "green", "king", "queen", "love", "night", "day", "sword", "rose", "moon",
    "sun", "lord", "lady", "fool", "ghost", "crown", "heart", "sea", "star",
];

/// One task: a question and its one correct answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub kind: &'static str,
    pub question: String,
    pub answer: String,
}

impl Task {
    pub fn messages(&self) -> Vec<Message> {
        vec![
            Message::new("user", &self.question),
            Message::new("assistant", &self.answer),
        ]
    }
}

fn digits(rng: &mut impl Rng, n: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(0..10)).collect()
}

fn join<T: ToString>(v: &[T]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A random task of a random kind.
pub fn sample(rng: &mut impl Rng) -> Task {
    match rng.random_range(0..5) {
        0 => {
            let (a, b) = (rng.random_range(0..50u32), rng.random_range(0..50u32));
            Task {
                kind: "add",
                question: format!("What is {a} plus {b}?"),
                answer: (a + b).to_string(),
            }
        }
        1 => {
            let n = rng.random_range(2..5);
            let words: Vec<&str> = (0..n).map(|_| *WORDS.choose(rng).expect("words")).collect();
            Task {
                kind: "copy",
                question: format!("Copy: {}", words.join(" ")),
                answer: words.join(" "),
            }
        }
        2 => {
            let n = rng.random_range(3..6);
            let d = digits(rng, n);
            let mut r = d.clone();
            r.reverse();
            Task {
                kind: "reverse",
                question: format!("Reverse: {}", join(&d)),
                answer: join(&r),
            }
        }
        3 => {
            let n = rng.random_range(3..6);
            let d = digits(rng, n);
            let mut s = d.clone();
            s.sort();
            Task {
                kind: "sort",
                question: format!("Sort: {}", join(&d)),
                answer: join(&s),
            }
        }
        _ => {
            let a = rng.random_range(0..100u32);
            let mut b = rng.random_range(0..100u32);
            if b == a {
                b = (a + 1) % 100;
            }
            Task {
                kind: "compare",
                question: format!("Which is larger, {a} or {b}?"),
                answer: a.max(b).to_string(),
            }
        }
    }
}

/// Which side of the train / held-out partition of all questions a task is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    HeldOut,
}

/// One question in this many is held out.
const HELD_OUT_ONE_IN: u64 = 8;

impl Split {
    /// The split `question` belongs to: FNV-1a of its text, so the partition is the same
    /// on every machine and for every seed.
    pub fn of(question: &str) -> Split {
        let hash = question.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        if hash % HELD_OUT_ONE_IN == 0 {
            Split::HeldOut
        } else {
            Split::Train
        }
    }
}

/// `n` tasks of `split` from `seed`. Held-out sets hold each question at most once (an
/// accuracy over repeats would count one item several times); training sets may repeat.
/// Asking for more distinct held-out questions than the generator can make is an error.
pub fn generate(n: usize, seed: u64, split: Split) -> Result<Vec<Task>> {
    generate_within(n, seed, split, 100_000)
}

/// [`generate`], giving up after `patience` draws in a row that add nothing.
fn generate_within(n: usize, seed: u64, split: Split, patience: usize) -> Result<Vec<Task>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n.min(1 << 20));
    let mut idle = 0;
    while out.len() < n {
        let task = sample(&mut rng);
        let fresh = Split::of(&task.question) == split
            && (split == Split::Train || seen.insert(task.question.clone()));
        if fresh {
            out.push(task);
            idle = 0;
        } else {
            idle += 1;
            if idle == patience {
                return Err(TrainError::Invalid(format!(
                    "could only make {} distinct {split:?} tasks of the {n} asked for",
                    out.len()
                )));
            }
        }
    }
    Ok(out)
}

/// Writes tasks as chat JSONL.
pub fn write_jsonl(tasks: &[Task], path: &Path) -> Result<()> {
    let mut text = String::new();
    for t in tasks {
        let line = serde_json::json!({ "messages": t.messages(), "kind": t.kind });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    Ok(llada::files::write_atomic(path, text.as_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_are_deterministic_varied_and_correct() {
        let a = generate(200, 1, Split::Train).unwrap();
        assert_eq!(a, generate(200, 1, Split::Train).unwrap());
        for kind in ["add", "copy", "reverse", "sort", "compare"] {
            assert!(a.iter().any(|t| t.kind == kind), "{kind}");
        }
        for t in &a {
            match t.kind {
                "add" => {
                    let nums: Vec<u32> = t
                        .question
                        .trim_end_matches('?')
                        .split(' ')
                        .filter_map(|w| w.parse().ok())
                        .collect();
                    assert_eq!(t.answer, (nums[0] + nums[1]).to_string());
                }
                "copy" => assert_eq!(t.question.strip_prefix("Copy: ").unwrap(), t.answer),
                _ => {}
            }
        }
    }

    #[test]
    fn held_out_items_never_appear_in_training_sets() {
        let held_out = generate(400, 0xE7A1, Split::HeldOut).unwrap();
        let questions: std::collections::HashSet<&str> =
            held_out.iter().map(|t| t.question.as_str()).collect();
        assert_eq!(questions.len(), held_out.len(), "held-out items repeat");
        for seed in [0, 1, 0xE7A1] {
            let train = generate(20_000, seed, Split::Train).unwrap();
            let leaked = train
                .iter()
                .filter(|t| questions.contains(t.question.as_str()))
                .count();
            assert_eq!(leaked, 0, "seed {seed}");
        }
        // Every kind has held-out items, and about one question in eight is held out.
        for kind in ["add", "copy", "reverse", "sort", "compare"] {
            assert!(held_out.iter().any(|t| t.kind == kind), "{kind}");
        }
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let share = (0..8000)
            .filter(|_| Split::of(&sample(&mut rng).question) == Split::HeldOut)
            .count();
        assert!((700..1300).contains(&share), "{share} of 8000 held out");
        assert!(generate_within(10_000, 0, Split::HeldOut, 20).is_err());
    }
}
