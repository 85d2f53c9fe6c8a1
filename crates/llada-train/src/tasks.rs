//! A generated task set whose answers can be checked: addition, copying, reversing,
//! sorting and comparing, as chat examples (`{"messages": [...]}` lines). Used for SFT
//! of the default model and for `llada eval`'s accuracy.

use std::path::Path;

use llada::Message;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{write_atomic, Result};

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

/// `n` tasks from `seed`.
pub fn generate(n: usize, seed: u64) -> Vec<Task> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| sample(&mut rng)).collect()
}

/// Writes tasks as chat JSONL.
pub fn write_jsonl(tasks: &[Task], path: &Path) -> Result<()> {
    let mut text = String::new();
    for t in tasks {
        let line = serde_json::json!({ "messages": t.messages(), "kind": t.kind });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_are_deterministic_varied_and_correct() {
        let a = generate(200, 1);
        assert_eq!(a, generate(200, 1));
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
}
