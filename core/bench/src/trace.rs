//! Editing traces in the josephg/editing-traces format (sequential or concurrent), read for `trace_bench` and
//! `storage_bench`.

use serde::Deserialize;
use std::io::Read;
use std::path::Path;

#[derive(Deserialize)]
struct RawTxn {
    #[serde(default)]
    agent: Option<usize>,
    #[serde(default)]
    parents: Option<Vec<usize>>,
    patches: Vec<(usize, usize, String)>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTrace {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    start_content: String,
    end_content: String,
    #[serde(default)]
    num_agents: Option<usize>,
    txns: Vec<RawTxn>,
}

/// One edit: at `pos` (characters), delete `del` characters, then insert `ins`.
pub struct Patch {
    pub pos: usize,
    pub del: usize,
    pub ins: String,
}

/// One transaction of the trace: by `agent`, after `parents` (indexes of earlier transactions).
pub struct Txn {
    pub agent: usize,
    pub parents: Vec<usize>,
    pub patches: Vec<Patch>,
}

/// A whole editing trace.
pub struct Trace {
    pub name: String,
    pub concurrent: bool,
    pub num_agents: usize,
    pub start: String,
    pub end: String,
    pub txns: Vec<Txn>,
    pub total_patches: usize,
    /// Every character of the trace is in the Basic Multilingual Plane (so code points == UTF-16 units).
    pub bmp_only: bool,
}

/// Read a trace file (`.json` or `.json.gz`).
pub fn load_trace(path: &Path) -> Result<Trace, String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let text = if path.extension().is_some_and(|e| e == "gz") {
        let mut s = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut s)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        s
    } else {
        String::from_utf8(bytes).map_err(|e| format!("{}: {e}", path.display()))?
    };
    let raw: RawTrace = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let name = file.trim_end_matches(".gz").trim_end_matches(".json").to_string();
    let concurrent = raw.kind.as_deref() == Some("concurrent") || raw.txns.iter().any(|t| t.parents.is_some());
    let mut txns = Vec::with_capacity(raw.txns.len());
    let mut total_patches = 0;
    let mut bmp_only = raw.end_content.chars().chain(raw.start_content.chars()).all(|c| (c as u32) < 0x10000);
    for (i, t) in raw.txns.into_iter().enumerate() {
        let parents = match t.parents {
            Some(p) => p,
            None if concurrent => Vec::new(),
            None => {
                if i == 0 {
                    Vec::new()
                } else {
                    vec![i - 1]
                }
            }
        };
        if let Some(&p) = parents.iter().find(|&&p| p >= i) {
            return Err(format!("txn {i} has parent {p}, not an earlier txn"));
        }
        total_patches += t.patches.len();
        let patches: Vec<Patch> = t.patches.into_iter().map(|(pos, del, ins)| Patch { pos, del, ins }).collect();
        bmp_only &= patches.iter().all(|p| p.ins.chars().all(|c| (c as u32) < 0x10000));
        txns.push(Txn { agent: t.agent.unwrap_or(0), parents, patches });
    }
    let num_agents = raw.num_agents.unwrap_or(1).max(txns.iter().map(|t| t.agent + 1).max().unwrap_or(1));
    if concurrent && !raw.start_content.is_empty() {
        return Err("concurrent traces with startContent are not supported".into());
    }
    Ok(Trace {
        name,
        concurrent,
        num_agents,
        start: raw.start_content,
        end: raw.end_content,
        txns,
        total_patches,
        bmp_only,
    })
}

/// Apply `p` to the text field `field` of a Shoal document being edited.
pub fn shoal_patch(ed: &mut shoaldb::DocEditor<'_>, field: &str, p: &Patch) -> Result<(), shoaldb::DocError> {
    if p.del > 0 {
        ed.text_delete(field, p.pos, p.del)?;
    }
    if !p.ins.is_empty() {
        ed.text_insert(field, p.pos, &p.ins)?;
    }
    Ok(())
}

/// Apply `p` to text object `text` of an Automerge document.
pub fn automerge_patch(doc: &mut automerge::AutoCommit, text: &automerge::ObjId, p: &Patch) -> Result<(), String> {
    use automerge::transaction::Transactable;
    if p.del > 0 {
        doc.splice_text(text, p.pos, p.del as isize, "").map_err(|e| e.to_string())?;
    }
    if !p.ins.is_empty() {
        doc.splice_text(text, p.pos, 0, &p.ins).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Apply `p` to a Loro text.
pub fn loro_patch(text: &loro::LoroText, p: &Patch) -> Result<(), String> {
    if p.del > 0 {
        text.delete(p.pos, p.del).map_err(|e| e.to_string())?;
    }
    if !p.ins.is_empty() {
        text.insert(p.pos, &p.ins).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Replay a sequential trace into text field `field` of document `doc_id` of `collection` (created with a `title`)
/// in a persisted store, one transaction per `per_commit` patches, as an editor saving as it goes.
pub fn replay_into_store(
    store: &shoaldb::Store,
    trace: &Trace,
    (collection, doc_id, field): (&str, &str, &str),
    per_commit: usize,
) -> Result<(), String> {
    let err = |e: shoaldb::Error| e.to_string();
    store.upsert(collection, serde_json::json!({"_id": doc_id, "title": trace.name})).map_err(err)?;
    if !trace.start.is_empty() {
        store.update(collection, doc_id, |ed| Ok(ed.text_insert(field, 0, &trace.start)?)).map_err(err)?;
    }
    let patches: Vec<&Patch> = trace.txns.iter().flat_map(|t| &t.patches).collect();
    for batch in patches.chunks(per_commit.max(1)) {
        store
            .update(collection, doc_id, |ed| {
                for p in batch {
                    shoal_patch(ed, field, p)?;
                }
                Ok(())
            })
            .map_err(err)?;
    }
    Ok(())
}
