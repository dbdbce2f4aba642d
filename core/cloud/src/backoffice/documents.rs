//! Documents: read one, query a collection, write as the cloud.
//!
//! A query runs in PostgreSQL as far as an index can take it, and is decided by the phones' own evaluator: the
//! filter's top-level field equalities ([`Filter::required_equalities`]) become one JSONB containment test on the
//! GIN-indexed views, which narrows the candidates; each candidate's view is then rendered from its merged state
//! (exactly, as a phone renders it) and the filter decides. So the semantics are the phones' to the letter (types,
//! missing fields, `contains`, `in`, paths with indexes), and the index does the narrowing where the filter allows.
//! Results come in document id order (by code point, as phones order ids), a page at a time: a page stops at `limit` documents or after
//! [`MAX_SCANNED`] candidates, and `next` says where the next page starts.

use super::{blocking, ApiError, Authorized, BackOffice};
use crate::writer::{Edit, WriteError};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value as Json_};
use shoaldb::query::{Filter, Params};
use shoaldb::Document;
use std::sync::Arc;

/// The most documents one page returns.
pub const MAX_LIMIT: usize = 1000;

/// The most candidate documents one page looks at.
pub const MAX_SCANNED: usize = 5000;

/// Candidates read from PostgreSQL at a time.
const CHUNK: i64 = 250;

#[derive(Deserialize)]
pub(super) struct QueryParams {
    filter: Option<String>,
    /// The filter's `$parameters`, as a JSON object.
    params: Option<String>,
    limit: Option<usize>,
    /// Start after this document id.
    after: Option<String>,
}

/// `GET /v1/collections/{collection}/documents`.
pub(super) async fn query(
    _: Authorized,
    State(state): State<Arc<BackOffice>>,
    Path(collection): Path<String>,
    Query(q): Query<QueryParams>,
) -> Result<Json<Json_>, ApiError> {
    shoaldb::store::check_collection(&collection).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let filter =
        q.filter.as_deref().map(Filter::parse).transpose().map_err(|e| ApiError::bad_request(e.to_string()))?;
    let params: Params = match q.params.as_deref() {
        None => Params::new(),
        Some(text) => match serde_json::from_str(text) {
            Ok(Json_::Object(map)) => map,
            _ => return Err(ApiError::bad_request("params must be a JSON object")),
        },
    };
    if let Some(f) = &filter {
        f.check_params(&params).map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(format!("limit must be 1 to {MAX_LIMIT}")));
    }
    let containment = filter.as_ref().map(|f| containment(&f.required_equalities(&params))).filter(|c| !c.is_empty());
    let after = q.after.unwrap_or_default();
    let page = blocking(move || {
        let mut client = state.client()?;
        let mut found = Vec::new();
        let (mut scanned, mut last) = (0usize, after);
        let sql = match &containment {
            Some(_) => {
                "SELECT doc_id, state FROM docs \
                 WHERE collection = $1 AND doc_id COLLATE \"C\" > $2 AND view @> $4::text::jsonb \
                 ORDER BY doc_id COLLATE \"C\" LIMIT $3"
            }
            None => {
                "SELECT doc_id, state FROM docs WHERE collection = $1 AND doc_id COLLATE \"C\" > $2 \
                 ORDER BY doc_id COLLATE \"C\" LIMIT $3"
            }
        };
        let statement = client.prepare(sql)?;
        let contained = containment.map(|c| Json_::Object(c).to_string());
        loop {
            let rows = match &contained {
                Some(c) => client.query(&statement, &[&collection, &last, &CHUNK, c])?,
                None => client.query(&statement, &[&collection, &last, &CHUNK])?,
            };
            let exhausted = (rows.len() as i64) < CHUNK;
            for row in rows {
                let id: String = row.get(0);
                scanned += 1;
                if let Some(view) = view_of(&id, row.get(1))? {
                    let matched = match &filter {
                        Some(f) => f.matches(&view, &params).map_err(|e| ApiError::bad_request(e.to_string()))?,
                        None => true,
                    };
                    if matched {
                        found.push(view);
                    }
                }
                last = id;
                if found.len() >= limit || scanned >= MAX_SCANNED {
                    return Ok((found, Some(last)));
                }
            }
            if exhausted {
                return Ok((found, None));
            }
        }
    })
    .await?;
    let (documents, next) = page;
    Ok(Json(json!({"documents": documents, "next": next})))
}

/// The JSON view of a document from its merged state (`None` when removed).
fn view_of(id: &str, state: &[u8]) -> Result<Option<Json_>, ApiError> {
    let doc = Document::decode(state).map_err(|e| {
        log::error!("back office: the stored state of document {id:?} does not decode: {e}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "corrupt", format!("document {id:?} does not decode"))
    })?;
    Ok(doc.view(id))
}

/// One JSONB object that contains every required equality (as the views hold them: U+0000 as U+FFFD). A second
/// equality on a path already taken is left out: the filter still decides.
fn containment(equalities: &[(Vec<String>, Json_)]) -> Map<String, Json_> {
    let mut root = Map::new();
    'terms: for (keys, value) in equalities {
        let Some((last, parents)) = keys.split_last() else { continue };
        let mut at = &mut root;
        for key in parents {
            let key = clean(key);
            let entry = at.entry(key).or_insert_with(|| Json_::Object(Map::new()));
            match entry {
                Json_::Object(m) => at = m,
                _ => continue 'terms,
            }
        }
        at.entry(clean(last)).or_insert_with(|| crate::jsonb::jsonb_safe(value.clone()));
    }
    root
}

fn clean(key: &str) -> String {
    key.replace('\0', "\u{FFFD}")
}

/// `GET /v1/collections/{collection}/documents/{id}`.
pub(super) async fn get(
    _: Authorized,
    State(state): State<Arc<BackOffice>>,
    Path((collection, id)): Path<(String, String)>,
) -> Result<Json<Json_>, ApiError> {
    let view = blocking(move || {
        let row = state
            .client()?
            .query_opt("SELECT state FROM docs WHERE collection = $1 AND doc_id = $2", &[&collection, &id])?;
        match row {
            Some(row) => view_of(&id, row.get(0)),
            None => Ok(None),
        }
    })
    .await?;
    view.map(Json).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such document"))
}

/// `PUT`: upsert (fields merged, the document created if need be).
pub(super) async fn put(
    _: Authorized,
    State(state): State<Arc<BackOffice>>,
    Path((collection, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Json_>, ApiError> {
    write(state, collection, id, Edit::Upsert(fields(&body)?)).await
}

/// `PATCH`: update an existing document's fields.
pub(super) async fn patch(
    _: Authorized,
    State(state): State<Arc<BackOffice>>,
    Path((collection, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Json_>, ApiError> {
    write(state, collection, id, Edit::Update(fields(&body)?)).await
}

/// `DELETE`: remove the document.
pub(super) async fn delete(
    _: Authorized,
    State(state): State<Arc<BackOffice>>,
    Path((collection, id)): Path<(String, String)>,
) -> Result<Json<Json_>, ApiError> {
    write(state, collection, id, Edit::Remove).await
}

fn fields(body: &[u8]) -> Result<Map<String, Json_>, ApiError> {
    match serde_json::from_slice(body) {
        Ok(Json_::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("the body must be a JSON object (the document's fields)")),
        Err(e) => Err(ApiError::bad_request(format!("the body is not JSON: {e}"))),
    }
}

async fn write(state: Arc<BackOffice>, collection: String, id: String, edit: Edit) -> Result<Json<Json_>, ApiError> {
    let written = blocking(move || {
        let view = state.writer.write(&collection, &id, edit).map_err(|e| match e {
            WriteError::Invalid(m) => ApiError::bad_request(m),
            WriteError::NotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            WriteError::Refused(m) => ApiError::new(StatusCode::FORBIDDEN, "refused", m),
            WriteError::Storage(e) => ApiError::storage(&e),
        })?;
        Ok(json!({"id": id, "document": view}))
    })
    .await?;
    Ok(Json(written))
}
