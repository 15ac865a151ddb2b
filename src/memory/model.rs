//! Memory request and response shapes, and the validated values handlers work with.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::Timestamp;
use crate::error::{ApiError, ApiResult};
use crate::ids::MemoryId;

pub const MAX_CONTENT_CHARS: usize = 16_384;
pub const MAX_SUMMARY_CHARS: usize = 1_000;
pub const MAX_SOURCE_CHARS: usize = 256;
pub const MAX_TAGS: usize = 32;
pub const MAX_TAG_CHARS: usize = 64;
pub const MAX_SPACE_CHARS: usize = 64;
pub const MAX_BATCH: usize = 100;
/// Spaces one request may name (a search, a query's filter, an export).
pub const MAX_SPACES: usize = 32;
/// Sensitivity levels a query may name (there are four).
pub const MAX_SENSITIVITIES: usize = 4;
pub const DEFAULT_SPACE: &str = "default";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Sensitivity {
    Public,
    Internal,
    Confidential,
    Restricted,
}

impl Sensitivity {
    pub fn as_str(self) -> &'static str {
        match self {
            Sensitivity::Public => "public",
            Sensitivity::Internal => "internal",
            Sensitivity::Confidential => "confidential",
            Sensitivity::Restricted => "restricted",
        }
    }

    pub fn parse(s: &str) -> Option<Sensitivity> {
        match s {
            "public" => Some(Sensitivity::Public),
            "internal" => Some(Sensitivity::Internal),
            "confidential" => Some(Sensitivity::Confidential),
            "restricted" => Some(Sensitivity::Restricted),
            _ => None,
        }
    }
}

impl rusqlite::ToSql for Sensitivity {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl rusqlite::types::FromSql for Sensitivity {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let s = v.as_str()?;
        Sensitivity::parse(s).ok_or_else(|| crate::db::unknown_value("sensitivity", s))
    }
}

/// A space name: 1 to 64 of `A-Z a-z 0-9 _ - . :`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Space(String);

impl Space {
    pub fn parse(field: &str, raw: &str) -> ApiResult<Space> {
        let ok = !raw.is_empty()
            && raw.chars().count() <= MAX_SPACE_CHARS
            && raw
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
        if !ok {
            return Err(ApiError::field(
                field,
                "a space is 1 to 64 characters of letters or digits (any script), '_', '-', '.' or ':'",
            ));
        }
        Ok(Space(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `a,b` from a query string, or a JSON list; empty entries are ignored. At most
    /// [`MAX_SPACES`].
    pub fn parse_list(field: &str, raw: &[String]) -> ApiResult<Vec<Space>> {
        check_list_len(field, raw.len(), MAX_SPACES)?;
        raw.iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|s| Space::parse(field, s))
            .collect()
    }
}

#[derive(Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WriteRequest {
    /// What to remember: one self-contained statement (who, what, when), any language.
    pub content: String,
    /// The space to file it under (a topic or project, e.g. `work`, `家族`); `default` if absent.
    pub space: Option<String>,
    /// A short summary shown with the memory.
    pub summary: Option<String>,
    /// Labels to filter by later (no spaces or commas).
    pub tags: Option<Vec<String>>,
    /// How sensitive the content is; `internal` if absent.
    pub sensitivity: Option<Sensitivity>,
    /// Where it came from (a URL, a file, a conversation id).
    pub source: Option<String>,
    /// A retry with the same key gets the first answer; not part of what is stored.
    #[serde(skip_serializing)]
    pub idempotency_key: Option<String>,
}

/// A memory about to be stored, every field checked.
#[derive(Debug, Clone)]
pub struct NewMemory {
    pub content: String,
    pub space: Space,
    pub summary: Option<String>,
    pub tags: Vec<String>,
    pub sensitivity: Sensitivity,
    pub source: Option<String>,
}

/// A list in a request longer than `max` is refused (400 naming the field and the limit), so no
/// request can make the server do unbounded work for it.
pub fn check_list_len(field: &str, len: usize, max: usize) -> ApiResult<()> {
    if len > max {
        return Err(ApiError::field(
            field,
            format!("holds {len} entries; at most {max} are accepted"),
        ));
    }
    Ok(())
}

/// A tag: 1 to 64 characters (trimmed) without spaces, commas or control characters.
pub fn validate_tag(field: &str, raw: &str) -> ApiResult<String> {
    let tag = raw.trim();
    let valid = !tag.is_empty()
        && tag.chars().count() <= MAX_TAG_CHARS
        && !tag
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',');
    if !valid {
        return Err(ApiError::field(
            field,
            format!(
                "each tag is 1 to {MAX_TAG_CHARS} characters without spaces or commas; got {tag:?}"
            ),
        ));
    }
    Ok(tag.to_owned())
}

fn bounded(field: &str, value: Option<String>, max: usize) -> ApiResult<Option<String>> {
    match value {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Ok(None),
        Some(v) if v.chars().count() > max => Err(ApiError::field(
            field,
            format!("must be at most {max} characters"),
        )),
        Some(v) => Ok(Some(v)),
    }
}

impl WriteRequest {
    /// Validates every field; `prefix` is prepended to field names (`memories[3].`).
    pub fn validate(self, prefix: &str) -> ApiResult<NewMemory> {
        let f = |name: &str| format!("{prefix}{name}");
        if self.content.trim().is_empty() {
            return Err(ApiError::field(&f("content"), "must not be empty"));
        }
        let chars = self.content.chars().count();
        if chars > MAX_CONTENT_CHARS {
            return Err(ApiError::field(
                &f("content"),
                format!("is {chars} characters; at most {MAX_CONTENT_CHARS} are accepted"),
            ));
        }
        let space = match self.space.as_deref() {
            None | Some("") => Space(DEFAULT_SPACE.to_owned()),
            Some(s) => Space::parse(&f("space"), s)?,
        };
        let raw_tags = self.tags.unwrap_or_default();
        check_list_len(&f("tags"), raw_tags.len(), MAX_TAGS)?;
        let mut tags: Vec<String> = Vec::with_capacity(raw_tags.len());
        for tag in raw_tags {
            let tag = validate_tag(&f("tags"), &tag)?;
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        Ok(NewMemory {
            content: self.content,
            space,
            summary: bounded(&f("summary"), self.summary, MAX_SUMMARY_CHARS)?,
            tags,
            sensitivity: self.sensitivity.unwrap_or(Sensitivity::Internal),
            source: bounded(&f("source"), self.source, MAX_SOURCE_CHARS)?,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddingInfo {
    pub model: String,
    /// Model tokens embedded (the window is 256; longer content is truncated).
    pub tokens: usize,
    pub truncated: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    pub id: MemoryId,
    pub content: String,
    pub space: String,
    pub summary: Option<String>,
    pub tags: Vec<String>,
    pub sensitivity: Sensitivity,
    pub source: Option<String>,
    /// `cl100k_base` tokens of the content.
    pub token_count: usize,
    pub embedding: EmbeddingInfo,
    pub created_at: Timestamp,
}

#[derive(Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchRequest {
    pub memories: Vec<Value>,
    pub transactional: Option<bool>,
    #[serde(skip_serializing)]
    pub idempotency_key: Option<String>,
}

/// One item of a non-transactional batch.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchItem {
    pub index: usize,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

impl BatchItem {
    pub fn failed(index: usize, e: &ApiError) -> BatchItem {
        BatchItem {
            index,
            status: e.code.status().as_u16(),
            memory: None,
            error: Some(e.error_object()),
        }
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SearchBody {
    /// What to look for, in natural language (any language).
    pub query: String,
    /// Only these spaces (all of the caller's spaces if absent).
    pub spaces: Option<Vec<String>>,
    /// How many results, 1 to 100 (10 if absent).
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SearchParams {
    pub query: Option<String>,
    pub spaces: Option<String>,
    pub limit: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchResult {
    /// Cosine similarity between the query and the memory, from -1 to 1.
    pub score: f32,
    pub memory: Memory,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpaceUsage {
    pub space: String,
    pub count: i64,
    pub last_written_at: Timestamp,
}

pub const MAX_BATCH_QUERIES: usize = 50;

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TagMode {
    #[default]
    Any,
    All,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Semantic,
    Keyword,
    Hybrid,
}

/// A value that may be given alone or as a list.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    pub fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueryBody {
    /// What to look for, in natural language (any language).
    pub query: String,
    /// How many results, 1 to 100 (10 if absent).
    pub limit: Option<u32>,
    /// Results to skip, for the next page.
    pub offset: Option<u32>,
    /// Semantic mode: leave out results whose cosine similarity is below this (-1 to 1).
    pub similarity_threshold: Option<f32>,
    /// Only these spaces.
    pub spaces: Option<Vec<String>>,
    /// Only memories carrying these tags (any of them, or all with `tagMode: all`).
    pub tags: Option<Vec<String>>,
    /// `any` (default) or `all` of `tags`.
    pub tag_mode: Option<TagMode>,
    /// Only memories written at or after this time (RFC 3339).
    pub created_after: Option<Timestamp>,
    /// Only memories written before this time (RFC 3339).
    pub created_before: Option<Timestamp>,
    /// Only memories of this sensitivity (or these).
    pub sensitivity: Option<OneOrMany<Sensitivity>>,
    /// Only memories from this source.
    pub source: Option<String>,
    /// `semantic` (by meaning, default), `keyword` (exact words, BM25) or `hybrid` (both, fused).
    pub mode: Option<Mode>,
    /// Show how each result ranked on each side.
    pub explain: Option<bool>,
}

/// Conditions a memory must meet besides similarity. Empty lists mean "no condition".
#[derive(Debug, Clone, Default)]
pub struct MemoryFilter {
    pub spaces: Vec<Space>,
    pub tags: Vec<String>,
    pub tag_mode: TagMode,
    /// Inclusive.
    pub created_after: Option<Timestamp>,
    /// Exclusive.
    pub created_before: Option<Timestamp>,
    pub sensitivity: Vec<Sensitivity>,
    pub source: Option<String>,
}

impl MemoryFilter {
    pub fn is_empty(&self) -> bool {
        self.spaces.is_empty()
            && self.tags.is_empty()
            && self.created_after.is_none()
            && self.created_before.is_none()
            && self.sensitivity.is_empty()
            && self.source.is_none()
    }

    pub fn spaces_only(spaces: Vec<Space>) -> MemoryFilter {
        MemoryFilter {
            spaces,
            ..MemoryFilter::default()
        }
    }
}

/// How one result ranked on each side of a hybrid query (`explain: true`).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explain {
    pub semantic_rank: Option<usize>,
    pub semantic_score: Option<f32>,
    pub keyword_rank: Option<usize>,
    pub keyword_score: Option<f64>,
    pub fused_score: Option<f64>,
    /// Keyword and hybrid: the query's words this memory contains (as the index matches them:
    /// `migrations` matches `migration`; a Japanese or Chinese word inside a longer run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched_terms: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryResult {
    /// `semantic`: cosine similarity; `keyword`: BM25 (higher is better); `hybrid`: the
    /// reciprocal-rank-fusion score.
    pub score: f64,
    pub memory: Memory,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explain: Option<Explain>,
}

/// One query of a batch search: a bare string or an object.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum BatchQuery {
    Text(String),
    Search(SearchBody),
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchSearchBody {
    pub queries: Vec<Value>,
    pub deduplicate: Option<bool>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContextWindowBody {
    /// The question or task the context is for.
    pub query: String,
    /// The most tokens the context may take (1 to 2,000,000).
    pub token_budget: i64,
    /// Only these spaces.
    pub spaces: Option<Vec<String>>,
    /// How tokens are counted: `cl100k_base` (default), `o200k_base`, `p50k_base`, `r50k_base`.
    pub tokenizer: Option<String>,
    /// Leave out memories whose similarity to the query is below this.
    pub min_score: Option<f32>,
}

/// `GET /memory/recent`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecentParams {
    /// Only these spaces (comma-separated).
    pub spaces: Option<String>,
    /// How many, 1 to 100 (20 if absent).
    pub limit: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExportParams {
    pub spaces: Option<String>,
    pub after: Option<String>,
}

/// One exported memory: everything needed to restore it exactly, embedding included (used
/// as is on import when the model matches, re-computed otherwise).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExportRecord {
    pub id: String,
    pub content: String,
    pub space: String,
    pub summary: Option<String>,
    pub tags: Vec<String>,
    pub sensitivity: Sensitivity,
    pub source: Option<String>,
    pub created_at: Timestamp,
    pub embedding_model: Option<String>,
    /// Little-endian f32s, base64.
    pub embedding: Option<String>,
}
