//! Finding models where Hugging Face tools put them, and fetching them when allowed.
//!
//! `--model` takes a folder or a repo id (`org/name`, optionally `org/name@revision`).
//! A repo id resolves in the local HF cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`) through its `refs/` and `snapshots/` layout; nothing is
//! downloaded unless asked for with [`download`].

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A model reference as the user typed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoId {
    pub repo: String,
    pub revision: String,
}

impl RepoId {
    /// Parses `org/name` or `org/name@revision`; `None` when `spec` is not a repo id.
    pub fn parse(spec: &str) -> Option<Self> {
        let (repo, revision) = match spec.split_once('@') {
            Some((r, rev)) if !rev.is_empty() => (r, rev),
            Some(_) => return None,
            None => (spec, "main"),
        };
        let mut parts = repo.split('/');
        let (org, name) = (parts.next()?, parts.next()?);
        let valid = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if parts.next().is_some() || !valid(org) || !valid(name) {
            return None;
        }
        // A revision is a branch, tag or commit; it names files inside the cache
        // (`refs/REV`, `snapshots/REV`), so it may hold '/' (`refs/pr/1`) but no part
        // that leaves the repository's folder.
        if !revision.split('/').all(valid) {
            return None;
        }
        Some(Self {
            repo: repo.to_string(),
            revision: revision.to_string(),
        })
    }

    fn cache_folder(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }
}

/// The HF hub cache directory, as `huggingface_hub` chooses it.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("huggingface").join("hub")
}

/// The snapshot folder of `id` in the cache at `cache`, if it is there.
pub fn find_in_cache(cache: &Path, id: &RepoId) -> Option<PathBuf> {
    let root = cache.join(id.cache_folder());
    let commit = match std::fs::read_to_string(root.join("refs").join(&id.revision)) {
        Ok(hash) => hash.trim().to_string(),
        // A revision may also be a commit hash with no ref pointing at it.
        Err(_) => id.revision.clone(),
    };
    // A ref file holds a commit hash; anything else (a path) is not followed.
    if commit.is_empty()
        || !commit
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || commit.starts_with('.')
    {
        return None;
    }
    let snapshot = root.join("snapshots").join(commit);
    snapshot.join("config.json").is_file().then_some(snapshot)
}

/// Resolves `--model`: an existing folder or GGUF file, or a repo id found in the local
/// HF cache.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() || path.is_file() {
        return Ok(path.to_path_buf());
    }
    if spec.ends_with(".gguf") {
        return Err(Error::ModelNotFound {
            spec: spec.to_string(),
            detail: "no such GGUF file".into(),
        });
    }
    let cache = cache_dir();
    match RepoId::parse(spec) {
        Some(id) => find_in_cache(&cache, &id).ok_or_else(|| Error::ModelNotFound {
            spec: spec.to_string(),
            detail: format!(
                "not a folder, and {} (revision {}) is not in the Hugging Face cache at {}; \
                 fetch it with `llada download {}`",
                id.repo,
                id.revision,
                cache.display(),
                id.repo
            ),
        }),
        None => Err(Error::ModelNotFound {
            spec: spec.to_string(),
            detail: "no such folder (a Hugging Face repo id looks like org/name)".into(),
        }),
    }
}

/// Downloads a model repo into the HF cache (same layout `huggingface_hub` writes) and
/// returns its snapshot folder.
pub fn download(id: &RepoId, progress: bool) -> Result<PathBuf> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Repo, RepoType};

    let net = |e: hf_hub::api::sync::ApiError| Error::Download {
        repo: id.repo.clone(),
        message: e.to_string(),
    };
    let api = ApiBuilder::new()
        .with_cache_dir(cache_dir())
        .with_progress(progress)
        .build()
        .map_err(net)?;
    let repo = api.repo(Repo::with_revision(
        id.repo.clone(),
        RepoType::Model,
        id.revision.clone(),
    ));
    let info = repo.info().map_err(net)?;
    let listed: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let mut wanted: Vec<String> = crate::config::COMPANION_FILES
        .iter()
        .filter(|f| listed.iter().any(|l| l == *f))
        .map(|f| f.to_string())
        .collect();
    wanted.extend(
        listed
            .iter()
            .filter(|f| f.ends_with(".safetensors") || f.ends_with(".safetensors.index.json"))
            .cloned(),
    );
    if !wanted.iter().any(|f| f == "config.json") {
        return Err(Error::Download {
            repo: id.repo.clone(),
            message: "the repository has no config.json".into(),
        });
    }
    let mut snapshot = None;
    for file in &wanted {
        let path = repo.get(file).map_err(net)?;
        snapshot.get_or_insert_with(|| path.parent().map(Path::to_path_buf).unwrap_or_default());
    }
    Ok(snapshot.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_parse() {
        let id = RepoId::parse("inclusionAI/LLaDA2.0-mini").unwrap();
        assert_eq!(
            (id.repo.as_str(), id.revision.as_str()),
            ("inclusionAI/LLaDA2.0-mini", "main")
        );
        let id = RepoId::parse("a/b@v1.0").unwrap();
        assert_eq!(id.revision, "v1.0");
        assert_eq!(
            RepoId::parse("a/b@refs/pr/1").unwrap().revision,
            "refs/pr/1"
        );
        for bad in [
            "model",
            "./x/y",
            "/abs/path",
            "a/b/c",
            "a/",
            "a/b@",
            "../x",
            "org/x@../../..",
            "org/x@main/../../x",
            "org/x@/etc",
            "org/x@a b",
        ] {
            assert_eq!(RepoId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn snapshots_resolve_through_refs_and_hashes() {
        let cache = tempfile::tempdir().unwrap();
        let root = cache.path().join("models--org--tiny");
        let snap = root.join("snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(root.join("refs")).unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        std::fs::write(root.join("refs/main"), "abc123\n").unwrap();
        let main = RepoId::parse("org/tiny").unwrap();
        assert_eq!(find_in_cache(cache.path(), &main), Some(snap.clone()));
        let by_hash = RepoId::parse("org/tiny@abc123").unwrap();
        assert_eq!(find_in_cache(cache.path(), &by_hash), Some(snap));
        let missing = RepoId::parse("org/tiny@v2").unwrap();
        assert_eq!(find_in_cache(cache.path(), &missing), None);
        assert_eq!(
            find_in_cache(cache.path(), &RepoId::parse("org/other").unwrap()),
            None
        );
    }
}
