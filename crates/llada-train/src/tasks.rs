//! A generated task set whose answers can be checked, as chat examples (`{"messages":
//! [...]}` lines). Used for SFT of the default model and for `llada eval`'s accuracy.
//!
//! Two families: the five short kinds (addition, copying, reversing, sorting, comparing;
//! answers of 1-10 tokens) and kinds whose answers run 10-40 tokens, where filling many
//! tokens per forward pays (long lists, counting, spelling, multi-digit arithmetic with
//! carries, repetition).
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

/// Words to spell: [`WORDS`] and some longer ones.
const SPELL_WORDS: &[&str] = &[
    "red", "blue", "green", "king", "queen", "love", "night", "day", "sword", "rose", "moon",
    "sun", "lord", "lady", "fool", "ghost", "crown", "heart", "sea", "star", "castle", "winter",
    "summer", "forest", "honour", "battle", "father", "mother", "prince", "silver", "golden",
    "shadow", "letter", "garden", "tempest", "dream", "bright", "storm", "river", "stone",
];

/// The five short kinds, answers of 1-10 tokens.
pub const SHORT_KINDS: &[&str] = &["add", "copy", "reverse", "sort", "compare"];

/// The kinds with 10-40-token answers (multi-digit arithmetic: 3-5 digits).
pub const LONG_KINDS: &[&str] = &[
    "copy-long",
    "reverse-long",
    "sort-long",
    "count",
    "spell",
    "add-long",
    "sub-long",
    "repeat",
];

/// Share of generated tasks drawn from [`SHORT_KINDS`] in the full mix.
const SHORT_SHARE: f64 = 0.4;

/// Which kinds a task set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mix {
    /// The five short kinds only (the task set of the earlier default model: the same
    /// items, seed for seed, as before the long kinds existed).
    Short,
    /// Short kinds 40% of the time, long kinds otherwise.
    #[default]
    All,
}

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

impl std::str::FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "short" => Ok(Mix::Short),
            "all" => Ok(Mix::All),
            other => Err(format!("unknown task mix {other:?}: use short or all")),
        }
    }
}

/// A random task of the mix: for [`Mix::All`] a short kind with probability
/// `SHORT_SHARE`, else a long one.
pub fn sample(rng: &mut impl Rng, mix: Mix) -> Task {
    if mix == Mix::Short || rng.random_bool(SHORT_SHARE) {
        sample_short(rng)
    } else {
        sample_long(rng)
    }
}

fn pick_words<'a>(rng: &mut impl Rng, from: &[&'a str], n: usize) -> Vec<&'a str> {
    (0..n).map(|_| *from.choose(rng).expect("words")).collect()
}

/// A list of `n` words or of `n` digits, as strings.
fn words_or_digits(rng: &mut impl Rng, n: usize) -> Vec<String> {
    if rng.random_bool(0.5) {
        pick_words(rng, WORDS, n)
            .iter()
            .map(|w| w.to_string())
            .collect()
    } else {
        digits(rng, n).iter().map(|d| d.to_string()).collect()
    }
}

fn sample_long(rng: &mut impl Rng) -> Task {
    let kind = LONG_KINDS[rng.random_range(0..LONG_KINDS.len())];
    let (question, answer) = match kind {
        "copy-long" => {
            let n = rng.random_range(8..=24);
            let items = words_or_digits(rng, n);
            (format!("Copy: {}", items.join(" ")), items.join(" "))
        }
        "reverse-long" => {
            let n = rng.random_range(8..=24);
            let items = words_or_digits(rng, n);
            let reversed: Vec<&String> = items.iter().rev().collect();
            (format!("Reverse: {}", items.join(" ")), join(&reversed))
        }
        "sort-long" => {
            let n = rng.random_range(8..=24);
            let d = digits(rng, n);
            let mut s = d.clone();
            s.sort();
            (format!("Sort: {}", join(&d)), join(&s))
        }
        "count" => {
            let from = rng.random_range(0..90u32);
            let to = from + rng.random_range(4..=11);
            let range: Vec<u32> = (from..=to).collect();
            (format!("Count from {from} to {to}."), join(&range))
        }
        "spell" => {
            let n = rng.random_range(2..=3);
            let words = pick_words(rng, SPELL_WORDS, n);
            let spelled: Vec<String> = words
                .iter()
                .map(|w| w.chars().map(String::from).collect::<Vec<_>>().join(" "))
                .collect();
            (format!("Spell: {}", words.join(" ")), spelled.join(" / "))
        }
        "add-long" => {
            let a = rng.random_range(100..100_000u32);
            let b = rng.random_range(100..100_000u32);
            (format!("What is {a} plus {b}?"), (a + b).to_string())
        }
        "sub-long" => {
            let a = rng.random_range(100..100_000u32);
            let b = rng.random_range(100..100_000u32);
            let (a, b) = (a.max(b), a.min(b));
            (format!("What is {a} minus {b}?"), (a - b).to_string())
        }
        _ => {
            let n = rng.random_range(2..=3);
            let phrase = pick_words(rng, WORDS, n).join(" ");
            let times = rng.random_range(4..=8usize);
            let answer = vec![phrase.as_str(); times].join(" ");
            (format!("Repeat \"{phrase}\" {times} times."), answer)
        }
    };
    Task {
        kind,
        question,
        answer,
    }
}

fn sample_short(rng: &mut impl Rng) -> Task {
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
        if llada::synthetic::stable_hash(question).is_multiple_of(HELD_OUT_ONE_IN) {
            Split::HeldOut
        } else {
            Split::Train
        }
    }
}

/// `n` tasks of `mix` in `split` from `seed`. Held-out sets hold each question at most
/// once (an accuracy over repeats would count one item several times); training sets may
/// repeat. Asking for more distinct held-out questions than the generator can make is an
/// error.
pub fn generate(n: usize, seed: u64, split: Split, mix: Mix) -> Result<Vec<Task>> {
    generate_within(n, seed, split, mix, 100_000)
}

/// [`generate`], giving up after `patience` draws in a row that add nothing.
fn generate_within(
    n: usize,
    seed: u64,
    split: Split,
    mix: Mix,
    patience: usize,
) -> Result<Vec<Task>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n.min(1 << 20));
    let mut idle = 0;
    while out.len() < n {
        let task = sample(&mut rng, mix);
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

    /// The answer to a question, worked out from its text alone.
    fn solve(kind: &str, question: &str) -> String {
        let numbers: Vec<u64> = question
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|w| w.parse().ok())
            .collect();
        let list = |prefix: &str| -> Vec<String> {
            let rest = question.strip_prefix(prefix).expect("prefix");
            rest.split(' ').map(String::from).collect()
        };
        match kind {
            "add" | "add-long" => (numbers[0] + numbers[1]).to_string(),
            "sub-long" => (numbers[0] - numbers[1]).to_string(),
            "compare" => numbers[0].max(numbers[1]).to_string(),
            "copy" | "copy-long" => list("Copy: ").join(" "),
            "reverse" | "reverse-long" => {
                let mut l = list("Reverse: ");
                l.reverse();
                l.join(" ")
            }
            "sort" | "sort-long" => {
                let mut l = list("Sort: ");
                l.sort();
                l.join(" ")
            }
            "count" => (numbers[0]..=numbers[1])
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            "spell" => list("Spell: ")
                .iter()
                .map(|w| w.chars().map(String::from).collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
                .join(" / "),
            "repeat" => {
                let phrase = question.split('"').nth(1).expect("quoted phrase");
                vec![phrase; numbers[0] as usize].join(" ")
            }
            other => panic!("unknown kind {other}"),
        }
    }

    #[test]
    fn tasks_are_deterministic_varied_and_correct() {
        let a = generate(2000, 1, Split::Train, Mix::All).unwrap();
        assert_eq!(a, generate(2000, 1, Split::Train, Mix::All).unwrap());
        for kind in SHORT_KINDS.iter().chain(LONG_KINDS) {
            assert!(a.iter().any(|t| t.kind == *kind), "{kind}");
        }
        for t in &a {
            assert_eq!(t.answer, solve(t.kind, &t.question), "{t:?}");
        }
        let short = a.iter().filter(|t| SHORT_KINDS.contains(&t.kind)).count();
        assert!((700..900).contains(&short), "{short} of 2000 short");
        // The short mix is the task set the earlier default model was trained on: its
        // first items, seed 0, as `llada train tasks --seed 0` wrote them then.
        let short = generate(3, 0, Split::Train, Mix::Short).unwrap();
        let questions: Vec<&str> = short.iter().map(|t| t.question.as_str()).collect();
        assert_eq!(
            questions,
            ["Sort: 7 4 5 6 5", "Reverse: 4 8 8 9", "Reverse: 9 1 4 8 9"]
        );
    }

    #[test]
    fn long_kinds_have_long_answers_with_carries() {
        let a = generate(4000, 2, Split::Train, Mix::All).unwrap();
        for t in a.iter().filter(|t| LONG_KINDS.contains(&t.kind)) {
            let words = t.answer.split(' ').count();
            match t.kind {
                "add-long" | "sub-long" => assert!((1..=6).contains(&t.answer.len()), "{t:?}"),
                _ => assert!((5..=40).contains(&words), "{t:?}"),
            }
        }
        // Additions whose columns carry are common, not rare.
        let carries = a
            .iter()
            .filter(|t| t.kind == "add-long")
            .filter(|t| {
                let n: Vec<u32> = t
                    .question
                    .trim_end_matches('?')
                    .split(' ')
                    .filter_map(|w| w.parse().ok())
                    .collect();
                (n[0] % 10 + n[1] % 10) >= 10
            })
            .count();
        let adds = a.iter().filter(|t| t.kind == "add-long").count();
        assert!(carries * 3 > adds, "{carries} of {adds} carry");
    }

    #[test]
    fn held_out_items_never_appear_in_training_sets() {
        let held_out = generate(400, 0xE7A1, Split::HeldOut, Mix::All).unwrap();
        let questions: std::collections::HashSet<&str> =
            held_out.iter().map(|t| t.question.as_str()).collect();
        assert_eq!(questions.len(), held_out.len(), "held-out items repeat");
        for seed in [0, 1, 0xE7A1] {
            let train = generate(20_000, seed, Split::Train, Mix::All).unwrap();
            let leaked = train
                .iter()
                .filter(|t| questions.contains(t.question.as_str()))
                .count();
            assert_eq!(leaked, 0, "seed {seed}");
        }
        // Every kind has held-out items, and about one question in eight is held out.
        for kind in SHORT_KINDS.iter().chain(LONG_KINDS) {
            assert!(held_out.iter().any(|t| t.kind == *kind), "{kind}");
        }
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let share = (0..8000)
            .filter(|_| Split::of(&sample(&mut rng, Mix::All).question) == Split::HeldOut)
            .count();
        assert!((700..1300).contains(&share), "{share} of 8000 held out");
        assert!(generate_within(10_000, 0, Split::HeldOut, Mix::Short, 20).is_err());
    }
}
