//! The `manifests` source: a directory of ordinary Kubernetes YAML (one or many documents per
//! file, `kind: List` too), watched for changes. Services, EndpointSlices, Pods, Nodes and
//! Namespaces are read; other kinds are ignored, so a real manifest directory works as it is.
//!
//! A file that does not parse is reported with its path and line, and the last good content of
//! that file is kept: one bad edit never makes objects disappear from the mesh.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use serde_yaml_ng::Value;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::{ClusterObjects, ObjectKey, ViewSender};

/// Changes arriving within this window are read in one pass.
const COALESCE: Duration = Duration::from_millis(20);
/// A full rescan now and then, in case the file-system watcher missed an event.
const RESCAN: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ManifestsError {
    #[error("cannot read the manifest directory {dir}: {source}; does it exist?")]
    DirUnreadable {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot watch the manifest directory {dir}: {source}")]
    Watch { dir: PathBuf, source: notify::Error },
}

/// Why a file's current content was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    pub path: PathBuf,
    /// 1-based line of the problem, when the parser knows it.
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for FileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.path.display(), self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

/// One Kubernetes object we publish from, shared with the views built from it.
#[derive(Debug, Clone, PartialEq)]
enum Object {
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    Pod(Arc<Pod>),
    Node(Arc<Node>),
    Namespace(Arc<Namespace>),
}

/// What we know of one file: when we read it and what it held the last time it parsed.
struct FileState {
    modified: Option<SystemTime>,
    len: u64,
    objects: Vec<Object>,
    /// Why the current content was refused, if it was.
    problem: Option<FileProblem>,
}

pub struct ManifestsSource {
    dir: PathBuf,
    problems: watch::Sender<Vec<FileProblem>>,
}

impl ManifestsSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            problems: watch::channel(Vec::new()).0,
        }
    }

    /// Files whose current content was refused (their last good content is in use).
    pub fn problems(&self) -> watch::Receiver<Vec<FileProblem>> {
        self.problems.subscribe()
    }

    pub async fn run(self, views: ViewSender) -> Result<(), ManifestsError> {
        let (tx, mut changes) = mpsc::channel::<()>(1);
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
            if let Ok(event) = &event
                && !changes_content(&event.kind)
            {
                return;
            }
            // A full channel already means "something changed"; dropping the rest is fine.
            let _ = tx.try_send(());
        })
        .map_err(|source| self.watch_error(source))?;
        watcher
            .watch(&self.dir, RecursiveMode::Recursive)
            .map_err(|source| self.watch_error(source))?;

        let mut files: BTreeMap<PathBuf, FileState> = BTreeMap::new();
        let mut first = true;
        loop {
            let rescan = self.rescan(&mut files)?;
            self.problems.send_if_modified(|p| {
                let changed = *p != rescan.problems;
                *p = rescan.problems;
                changed
            });
            // Unchanged files cost a stat each and nothing more; a change rebuilds the view
            // from the shared objects (pointers, not copies).
            if rescan.objects_changed || first {
                first = false;
                let view = build_view(&files);
                info!(
                    dir = %self.dir.display(),
                    services = view.services.len(),
                    endpoint_slices = view.endpoint_slices.len(),
                    pods = view.pods.len(),
                    nodes = view.nodes.len(),
                    "manifests changed"
                );
                views.send_replace(Some(Arc::new(view)));
            }
            tokio::select! {
                _ = changes.recv() => tokio::time::sleep(COALESCE).await,
                _ = tokio::time::sleep(RESCAN) => {}
            }
            // Swallow whatever arrived while we slept; this pass reads it all.
            while changes.try_recv().is_ok() {}
        }
    }

    fn watch_error(&self, source: notify::Error) -> ManifestsError {
        ManifestsError::Watch {
            dir: self.dir.clone(),
            source,
        }
    }

    /// Re-reads files that changed and forgets files that are gone.
    fn rescan(&self, files: &mut BTreeMap<PathBuf, FileState>) -> Result<Rescan, ManifestsError> {
        let paths = manifest_files(&self.dir).map_err(|source| ManifestsError::DirUnreadable {
            dir: self.dir.clone(),
            source,
        })?;
        let known = files.len();
        // `paths` is sorted: a binary search keeps this O(n log n); a linear `contains` made
        // a directory of 100k manifests take minutes per rescan.
        files.retain(|path, _| paths.binary_search(path).is_ok());
        let mut objects_changed = files.len() != known;
        for path in paths {
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(_) => continue, // removed between the listing and now
            };
            let modified = meta.modified().ok();
            if let Some(known) = files.get(&path)
                && known.modified == modified
                && known.len == meta.len()
            {
                continue;
            }
            match std::fs::read_to_string(&path)
                .map_err(|e| FileProblem {
                    path: path.clone(),
                    line: None,
                    message: e.to_string(),
                })
                .and_then(|text| parse_file(&path, &text))
            {
                Ok(objects) => {
                    debug!(path = %path.display(), objects = objects.len(), "read manifest");
                    // A rewrite with the same objects (a touch, an editor's save) is no change.
                    objects_changed |= files.get(&path).is_none_or(|old| old.objects != objects);
                    files.insert(
                        path,
                        FileState {
                            modified,
                            len: meta.len(),
                            objects,
                            problem: None,
                        },
                    );
                }
                Err(problem) => {
                    warn!(problem = %problem, "manifest refused; keeping its last good content");
                    // Remember the stamp so the same bad content is not re-read every pass,
                    // but keep the objects of the last good read.
                    let entry = files.entry(path).or_insert(FileState {
                        modified: None,
                        len: 0,
                        objects: Vec::new(),
                        problem: None,
                    });
                    entry.modified = modified;
                    entry.len = meta.len();
                    entry.problem = Some(problem);
                }
            }
        }
        Ok(Rescan {
            problems: files.values().filter_map(|f| f.problem.clone()).collect(),
            objects_changed,
        })
    }
}

/// What one rescan found.
struct Rescan {
    /// Files whose current content was refused (their last good content is in use).
    problems: Vec<FileProblem>,
    /// Whether the union of the files' objects may differ from the last view.
    objects_changed: bool,
}

/// Whether a file-system event may change what the directory holds. Opening and reading are
/// not: without this filter our own reads (and listing the directory) woke the next rescan,
/// forever. A file closed after writing is (inotify's close-write arrives as an access event).
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Every `.yaml`, `.yml` and `.json` file under `dir`, recursively, sorted; hidden files and
/// editors' temporary files are skipped.
fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.ends_with('~') {
                continue;
            }
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(path);
            } else if [".yaml", ".yml", ".json"]
                .iter()
                .any(|ext| name.ends_with(ext))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Parses every document of a file; the first problem refuses the whole file.
fn parse_file(path: &Path, text: &str) -> Result<Vec<Object>, FileProblem> {
    let mut objects = Vec::new();
    for (start_line, doc) in split_documents(text) {
        let problem = |line: Option<usize>, message: String| FileProblem {
            path: path.to_owned(),
            line,
            message,
        };
        let value: Value = serde_yaml_ng::from_str(doc).map_err(|e| {
            let line = e.location().map(|l| start_line + l.line() - 1);
            problem(line, e.to_string())
        })?;
        if value.is_null() {
            continue; // an empty document
        }
        collect_objects(value, &mut objects)
            .map_err(|message| problem(Some(start_line), message))?;
    }
    Ok(objects)
}

/// Splits a YAML stream at `---` lines, returning each document with its first line number.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start_byte = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            docs.push((start_line, &text[start_byte..offset]));
            start_byte = offset + line.len();
            start_line = index + 2;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start_byte..]));
    docs
}

fn collect_objects(value: Value, out: &mut Vec<Object>) -> Result<(), String> {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    fn typed<T: serde::de::DeserializeOwned>(value: Value, kind: &str) -> Result<T, String> {
        serde_yaml_ng::from_value(value).map_err(|e| format!("not a valid {kind}: {e}"))
    }
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "List") => {
            let items = match value.get("items") {
                Some(Value::Sequence(items)) => items.clone(),
                _ => Vec::new(),
            };
            for item in items {
                collect_objects(item, out)?;
            }
        }
        ("v1", "Service") => out.push(Object::Service(Arc::new(typed(value, &kind)?))),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            out.push(Object::EndpointSlice(Arc::new(typed(value, &kind)?)))
        }
        ("v1", "Pod") => out.push(Object::Pod(Arc::new(typed(value, &kind)?))),
        ("v1", "Node") => out.push(Object::Node(Arc::new(typed(value, &kind)?))),
        ("v1", "Namespace") => out.push(Object::Namespace(Arc::new(typed(value, &kind)?))),
        ("", _) | (_, "") => {
            return Err("a document without apiVersion and kind is not a Kubernetes object".into());
        }
        _ => debug!(%api_version, %kind, "ignoring a kind we do not publish from"),
    }
    Ok(())
}

fn namespaced_key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectKey {
    ObjectKey::new(
        meta.namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The union of every file's last good objects. If two files define the same object, the one
/// in the file that sorts last wins (like `kubectl apply -f dir/` applying in order).
fn build_view(files: &BTreeMap<PathBuf, FileState>) -> ClusterObjects {
    let mut view = ClusterObjects::default();
    for state in files.values() {
        for object in &state.objects {
            match object {
                Object::Service(s) => {
                    view.services
                        .insert(namespaced_key(&s.metadata), Arc::clone(s));
                }
                Object::EndpointSlice(s) => {
                    view.endpoint_slices
                        .insert(namespaced_key(&s.metadata), Arc::clone(s));
                }
                Object::Pod(p) => {
                    view.pods.insert(namespaced_key(&p.metadata), Arc::clone(p));
                }
                Object::Node(n) => {
                    let name = n.metadata.name.clone().unwrap_or_default();
                    view.nodes.insert(name, Arc::clone(n));
                }
                Object::Namespace(n) => {
                    let name = n.metadata.name.clone().unwrap_or_default();
                    view.namespaces.insert(name, Arc::clone(n));
                }
            }
        }
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_DOCS: &str = "apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: demo
spec:
  clusterIP: 10.96.0.10
  ports:
  - name: http
    port: 80
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: ignored
---
apiVersion: v1
kind: Node
metadata:
  name: node-1
";

    #[test]
    fn multi_document_files_are_read_and_other_kinds_ignored() {
        let objects = parse_file(Path::new("x.yaml"), TWO_DOCS).unwrap();
        assert_eq!(objects.len(), 2);
        assert!(matches!(objects[0], Object::Service(_)));
        assert!(matches!(objects[1], Object::Node(_)));
    }

    #[test]
    fn a_syntax_error_names_the_line_in_the_file() {
        let text = format!("{TWO_DOCS}---\napiVersion: v1\nkind: Pod\nmetadata: name: x\n");
        let err = parse_file(Path::new("bad.yaml"), &text).unwrap_err();
        // The broken line is the 24th of the file (the 3rd of the fourth document).
        assert_eq!(err.line, Some(24), "{err}");
        assert!(err.to_string().starts_with("bad.yaml:24:"), "{err}");
    }

    #[test]
    fn a_type_error_names_the_document() {
        let text = "apiVersion: v1\nkind: Service\nspec:\n  ports: 12\n";
        let err = parse_file(Path::new("svc.yaml"), text).unwrap_err();
        assert_eq!(err.line, Some(1));
        assert!(err.message.contains("not a valid Service"), "{err}");
    }

    #[test]
    fn lists_are_unpacked() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: demo\n";
        let objects = parse_file(Path::new("list.yaml"), text).unwrap();
        assert!(matches!(objects[..], [Object::Namespace(_)]));
    }
}
