//! The Files API and the file path into batches: uploads, retrieval, listing, deletion, batch
//! creation from an uploaded JSONL file, and output/error files rendered as real JSONL on demand.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tagstorm_core::Time;

use crate::batch::{
    Batch, BatchLine, BatchStatus, CHAT_ENDPOINT, Doom, LineOutcome, RequestCounts, Script,
};
use crate::chat::FinishReason;
use crate::error::ApiError;
use crate::ids;
use crate::jsonl::{self, InputLimits};
use crate::org::OrgId;
use crate::tags::Tags;
use crate::upstream::Upstream;

/// Largest upload, in bytes (facts §4: 512 MB).
pub const MAX_UPLOAD_BYTES: u64 = 512 * 1024 * 1024;
/// How long batch input and output files live, in seconds (facts §4: 30 days).
const BATCH_FILE_TTL: Duration = Duration::from_secs(30 * 86_400);
/// Largest page of `GET /v1/files`, and its default size (facts §4).
pub const MAX_LIST_FILES: u32 = 10_000;
/// Purposes an upload may carry (facts §4).
const UPLOAD_PURPOSES: [&str; 6] = [
    "assistants",
    "batch",
    "fine-tune",
    "vision",
    "user_data",
    "evals",
];

/// The file object (facts §4, `OpenAIFile`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileObject {
    /// `file-` + 22 alphanumerics.
    pub id: String,
    /// Always `file`.
    pub object: &'static str,
    /// Size, in bytes.
    pub bytes: u64,
    /// Upload (or result) time, Unix seconds.
    pub created_at: u64,
    /// Expiry, Unix seconds (30 days after creation for batch files).
    pub expires_at: Option<u64>,
    /// The name given at upload (`batch_…_output.jsonl` for results).
    pub filename: String,
    /// `batch`, `batch_output`, …
    pub purpose: String,
    /// Always `processed` (deprecated field, still required).
    pub status: &'static str,
    /// Always null.
    pub status_details: Option<String>,
}

/// `DELETE /v1/files/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileDeleted {
    /// The deleted file.
    pub id: String,
    /// Always `file`.
    pub object: &'static str,
    /// Always true.
    pub deleted: bool,
}

/// The order of a list by creation time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ListOrder {
    /// Oldest first.
    Asc,
    /// Newest first (OpenAI's default).
    #[default]
    Desc,
}

/// The parameters of `GET /v1/files` (facts §4).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileListQuery {
    /// Only files with this purpose (`batch`, `batch_output`, …); any purpose when `None`.
    pub purpose: Option<String>,
    /// Page size, clamped to `1..=`[`MAX_LIST_FILES`]; [`MAX_LIST_FILES`] when `None`.
    pub limit: Option<u32>,
    /// By creation time, newest first by default.
    pub order: ListOrder,
    /// The page starts after this file id, in the list's order.
    pub after: Option<String>,
}

/// `GET /v1/files`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileList {
    /// Always `list`.
    pub object: &'static str,
    /// In the query's order.
    pub data: Vec<FileObject>,
    /// Id of the first entry.
    pub first_id: Option<String>,
    /// Id of the last entry.
    pub last_id: Option<String>,
    /// Whether more files follow in this order.
    pub has_more: bool,
}

#[derive(Debug)]
pub(crate) enum Content {
    Uploaded(Bytes),
    Output(usize),
    Errors(usize),
}

#[derive(Debug)]
pub(crate) struct StoredFile {
    pub org: OrgId,
    pub id: String,
    pub filename: String,
    /// Borrowed for result files (`batch_output`), which the model registers for every batch.
    pub purpose: Cow<'static, str>,
    pub created: Time,
    /// How long the file lives after `created` (`expires_at`); `None`: until deleted.
    pub ttl: Option<Duration>,
    pub content: Content,
    /// Rendered result files, cached after the first request.
    pub rendered: Option<Bytes>,
    pub deleted: bool,
}

impl Upstream {
    pub(crate) fn fresh_file_id(&mut self) -> String {
        self.fresh_file_id_from(0).0
    }

    /// Two ids, the same as two [`Upstream::fresh_file_id`] calls in a row (a new batch's
    /// output and error files). Both calls start from the same counter, so the second would
    /// first draw again every candidate the first drew, all of them taken by then (the last one
    /// by the first id); it starts after them instead, which saves an id's 22 draws a batch.
    pub(crate) fn fresh_file_id_pair(&mut self) -> (String, String) {
        let (first, tries) = self.fresh_file_id_from(0);
        let (second, _) = self.fresh_file_id_from(tries);
        (first, second)
    }

    /// [`Upstream::fresh_file_id`], skipping its first `skip` candidates (known to be taken):
    /// the id, and how many candidates it has passed, itself included.
    fn fresh_file_id_from(&mut self, skip: u64) -> (String, u64) {
        let base = self.files.len() as u64 + (self.batches.len() as u64) * 2;
        for i in skip..64 {
            let k = base.wrapping_add(i << 40);
            let id = ids::prefixed_alnum("file-", ids::mix(self.seed, ids::ns::FILE, k), 22);
            if !self.file_by_id.contains_key(&id) {
                self.file_by_id.insert(id.clone(), usize::MAX);
                return (id, i + 1);
            }
        }
        // 131 bits of randomness collided 64 times: give up gracefully with a counter id.
        (format!("file-{:022}", self.files.len()), 64)
    }

    fn store_file(&mut self, file: StoredFile) -> usize {
        let idx = self.files.len();
        // `fresh_file_id` has already put the id in the map (to reserve it), so usually only
        // the index is filled in, without another copy of the key.
        match self.file_by_id.get_mut(&file.id) {
            Some(slot) => *slot = idx,
            None => {
                self.file_by_id.insert(file.id.clone(), idx);
            }
        }
        self.files.push(file);
        idx
    }

    fn find_file(&self, org: OrgId, id: &str) -> Result<usize, ApiError> {
        match self.file_by_id.get(id) {
            Some(&idx)
                if self
                    .files
                    .get(idx)
                    .is_some_and(|f| f.org == org && !f.deleted) =>
            {
                Ok(idx)
            }
            _ => Err(ApiError::no_such_object("File", id)),
        }
    }

    /// `POST /v1/files`. Malformed JSONL is accepted here and fails at batch validation
    /// (facts §4). A `batch` file expires 30 days after upload, any other is kept.
    pub fn upload_file(
        &mut self,
        now: Time,
        org: OrgId,
        filename: &str,
        purpose: &str,
        bytes: impl Into<Bytes>,
    ) -> Result<FileObject, ApiError> {
        self.upload_file_expiring(now, org, filename, purpose, bytes, None)
    }

    /// `POST /v1/files` with `expires_after` (facts §4): the file's `expires_at` is
    /// `expires_after` after its upload, whatever its purpose; `None` keeps the default of
    /// [`Upstream::upload_file`].
    pub fn upload_file_expiring(
        &mut self,
        now: Time,
        org: OrgId,
        filename: &str,
        purpose: &str,
        bytes: impl Into<Bytes>,
        expires_after: Option<Duration>,
    ) -> Result<FileObject, ApiError> {
        let bytes = bytes.into();
        let now = self.advance(now);
        if self.orgs.get(org.0 as usize).is_none() {
            return Err(ApiError::invalid_api_key("sk-****"));
        }
        if !UPLOAD_PURPOSES.contains(&purpose) {
            return Err(ApiError::invalid_value(
                "purpose",
                &format!("'{purpose}' is not one of {UPLOAD_PURPOSES:?}."),
            ));
        }
        if purpose == "batch" && !filename.ends_with(".jsonl") {
            return Err(ApiError::invalid_batch_file_format());
        }
        if bytes.len() as u64 > MAX_UPLOAD_BYTES {
            return Err(ApiError::invalid_value(
                "file",
                "files may be at most 512 MB.",
            ));
        }
        let id = self.fresh_file_id();
        let idx = self.store_file(StoredFile {
            org,
            id,
            filename: filename.to_owned(),
            purpose: Cow::Owned(purpose.to_owned()),
            created: now,
            ttl: expires_after.or((purpose == "batch").then_some(BATCH_FILE_TTL)),
            content: Content::Uploaded(bytes),
            rendered: None,
            deleted: false,
        });
        Ok(self.file_view(idx))
    }

    /// `GET /v1/files/{id}`.
    pub fn retrieve_file(
        &mut self,
        now: Time,
        org: OrgId,
        id: &str,
    ) -> Result<FileObject, ApiError> {
        self.advance(now);
        let idx = self.find_file(org, id)?;
        Ok(self.file_view(idx))
    }

    /// `DELETE /v1/files/{id}`.
    pub fn delete_file(
        &mut self,
        now: Time,
        org: OrgId,
        id: &str,
    ) -> Result<FileDeleted, ApiError> {
        self.advance(now);
        let idx = self.find_file(org, id)?;
        let f = &mut self.files[idx];
        f.deleted = true;
        f.rendered = None;
        if let Content::Uploaded(bytes) = &mut f.content {
            *bytes = Bytes::new();
        }
        Ok(FileDeleted {
            id: id.to_owned(),
            object: "file",
            deleted: true,
        })
    }

    /// `GET /v1/files?purpose=&limit=&order=&after=`: the organization's files, deleted ones
    /// left out, by creation time with ties in upload order (reversed for `desc`). The result
    /// files of batches that have ended by `now` are listed whether or not the batch has been
    /// retrieved since. As in [`Upstream::list_batches`], an `after` that is not in the list
    /// (unknown, deleted, or of another purpose) gives an empty page.
    pub fn list_files(&mut self, now: Time, org: OrgId, query: &FileListQuery) -> FileList {
        let now = self.advance(now);
        self.release_ended(now, org);
        // Result files are registered when a batch is first seen ended; see to it here so a
        // list after the end shows them, as OpenAI's does.
        let ended: Vec<usize> = self
            .orgs
            .get(org.0 as usize)
            .map(|o| {
                o.batches
                    .iter()
                    .copied()
                    .filter(|&i| {
                        let b = &self.batches[i];
                        !b.files_registered && has_results(b.status(now))
                    })
                    .collect()
            })
            .unwrap_or_default();
        for idx in ended {
            self.batch_view(now, idx);
        }
        let purpose = query.purpose.as_deref();
        let mut all: Vec<usize> = (0..self.files.len())
            .filter(|&i| {
                let f = &self.files[i];
                f.org == org && !f.deleted && purpose.is_none_or(|p| f.purpose == p)
            })
            .collect();
        // Result files are stored when first seen, possibly after later uploads: sort by
        // creation (stable, so ties keep their upload order).
        all.sort_by_key(|&i| self.files[i].created);
        if query.order == ListOrder::Desc {
            all.reverse();
        }
        let start = match query.after.as_deref() {
            None => 0,
            Some(a) => all
                .iter()
                .position(|&i| self.files[i].id == a)
                .map_or(all.len(), |p| p + 1),
        };
        let limit = query
            .limit
            .unwrap_or(MAX_LIST_FILES)
            .clamp(1, MAX_LIST_FILES) as usize;
        let page = &all[start..(start + limit).min(all.len())];
        let has_more = start + page.len() < all.len();
        let data: Vec<FileObject> = page.iter().map(|&i| self.file_view(i)).collect();
        FileList {
            object: "list",
            first_id: data.first().map(|f| f.id.clone()),
            last_id: data.last().map(|f| f.id.clone()),
            has_more,
            data,
        }
    }

    /// `GET /v1/files/{id}/content`: the uploaded bytes, or the rendered JSONL of a batch
    /// output or error file. A shared handle, not a copy: a server can send up to 200 MB
    /// without holding the model while it copies.
    pub fn file_content(&mut self, now: Time, org: OrgId, id: &str) -> Result<Bytes, ApiError> {
        self.advance(now);
        let idx = self.find_file(org, id)?;
        self.ensure_rendered(idx);
        let f = &self.files[idx];
        Ok(match (&f.content, &f.rendered) {
            (Content::Uploaded(bytes), _) => bytes.clone(),
            (_, Some(r)) => r.clone(),
            (_, None) => Bytes::new(),
        })
    }

    fn file_view(&mut self, idx: usize) -> FileObject {
        self.ensure_rendered(idx);
        let epoch = self.config.epoch_unix_s;
        let unix = |t: Time| epoch.saturating_add(t.as_nanos() / 1_000_000_000);
        let f = &self.files[idx];
        let bytes = match (&f.content, &f.rendered) {
            (Content::Uploaded(b), _) => b.len(),
            (_, Some(r)) => r.len(),
            (_, None) => 0,
        } as u64;
        FileObject {
            id: f.id.clone(),
            object: "file",
            bytes,
            created_at: unix(f.created),
            expires_at: f.ttl.map(|ttl| unix(f.created + ttl)),
            filename: f.filename.clone(),
            purpose: f.purpose.clone().into_owned(),
            status: "processed",
            status_details: None,
        }
    }

    /// Registers the output and error files of an ended batch.
    pub(crate) fn register_result_files(&mut self, idx: usize, counts: RequestCounts) {
        let b = &mut self.batches[idx];
        b.files_registered = true;
        let (org, end) = (b.org, b.end_time());
        let ttl = Some(b.output_ttl.unwrap_or(BATCH_FILE_TTL));
        // Only the files that have lines are stored: usually the output file alone.
        let out = (counts.completed > 0)
            .then(|| (b.output_file_id.clone(), format!("{}_output.jsonl", b.id)));
        let err =
            (counts.failed > 0).then(|| (b.error_file_id.clone(), format!("{}_error.jsonl", b.id)));
        if let Some((id, filename)) = out {
            self.store_file(StoredFile {
                org,
                id,
                filename,
                purpose: Cow::Borrowed("batch_output"),
                created: end,
                ttl,
                content: Content::Output(idx),
                rendered: None,
                deleted: false,
            });
        }
        if let Some((id, filename)) = err {
            self.store_file(StoredFile {
                org,
                id,
                filename,
                purpose: Cow::Borrowed("batch_output"),
                created: end,
                ttl,
                content: Content::Errors(idx),
                rendered: None,
                deleted: false,
            });
        }
    }

    fn ensure_rendered(&mut self, idx: usize) {
        let (batch_idx, want_ok) = match self.files[idx].content {
            Content::Uploaded(_) => return,
            Content::Output(b) => (b, true),
            Content::Errors(b) => (b, false),
        };
        if self.files[idx].rendered.is_some() || self.files[idx].deleted {
            return;
        }
        let text = self.render_results(batch_idx, want_ok);
        self.files[idx].rendered = Some(Bytes::from(text));
    }

    /// Renders the output (`want_ok`) or error file of an ended batch.
    fn render_results(&self, idx: usize, want_ok: bool) -> String {
        let b = &self.batches[idx];
        let end = b.end_time();
        let status = b.status(end);
        let done = b.done(end);
        let base = ids::mix(self.seed, ids::ns::BATCH_REQ, idx as u64);
        let mut out = String::new();
        for (i, line) in b.lines.iter().enumerate() {
            let outcome = b.line_outcome(i, done, status, || line.tags);
            let is_ok = matches!(outcome, LineOutcome::Ok { .. });
            if is_ok != want_ok {
                continue;
            }
            let k = base ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let req_id = ids::prefixed_hex("batch_req_", ids::mix(k, ids::ns::BATCH_REQ, 0), 32);
            let request_id = ids::prefixed_hex("req_", ids::mix(k, ids::ns::REQUEST, 0), 32);
            let text = match outcome {
                LineOutcome::Ok { usage, tags } => {
                    // Cut as a realtime answer is: 4 bytes a token.
                    let finish = if b.cut_lines.binary_search(&(i as u32)).is_ok() {
                        FinishReason::Length
                    } else {
                        FinishReason::Stop
                    };
                    let content = crate::chat::content(tags, usage, finish);
                    let finish = finish.as_str();
                    let completion =
                        ids::prefixed_alnum("chatcmpl-", ids::mix(k, ids::ns::COMPLETION, 0), 29);
                    let created = self.file_unix_s(b.line_time(i as u64));
                    let body = jsonl::chat_completion_json(
                        &completion,
                        created,
                        b.model,
                        &content,
                        finish,
                        usage,
                    );
                    jsonl::output_line(&req_id, &line.custom_id, &request_id, body)
                }
                LineOutcome::Err {
                    status: Some(code), ..
                } => match b.rejected_error(i) {
                    Some(e) => {
                        jsonl::http_error_line(&req_id, &line.custom_id, &request_id, e.status, e)
                    }
                    None => jsonl::http_error_line(
                        &req_id,
                        &line.custom_id,
                        &request_id,
                        code,
                        &ApiError::server_error(),
                    ),
                },
                LineOutcome::Err {
                    status: None,
                    code,
                    message,
                } => jsonl::not_run_line(&req_id, &line.custom_id, code, message),
            };
            out.push_str(&text);
            out.push('\n');
        }
        out
    }

    /// `output_expires_after` of batch `id` (facts §5): its output and error files expire
    /// `ttl` after they are created instead of after 30 days.
    pub fn set_batch_output_ttl(
        &mut self,
        org: OrgId,
        id: &str,
        ttl: Duration,
    ) -> Result<(), ApiError> {
        let idx = self.find_batch(org, id)?;
        let b = &mut self.batches[idx];
        b.output_ttl = Some(ttl);
        // Files of a batch that ended at once (a zero-length timeline) are already stored.
        for file in [&b.output_file_id, &b.error_file_id] {
            if let Some(f) = self
                .file_by_id
                .get(file)
                .and_then(|&i| self.files.get_mut(i))
            {
                f.ttl = Some(ttl);
            }
        }
        Ok(())
    }

    /// `POST /v1/batches`: creates a batch from an uploaded `purpose=batch` JSONL file. Request
    /// problems (bad window or endpoint, unknown file) are 4xx; content problems make the
    /// created batch fail validation (facts §5).
    pub fn create_batch(
        &mut self,
        now: Time,
        org: OrgId,
        input_file_id: &str,
        endpoint: &str,
        completion_window: &str,
    ) -> Result<Batch, ApiError> {
        let now = self.advance(now);
        let org_model = self
            .org_limits(org)
            .map(|l| l.model)
            .ok_or_else(|| ApiError::invalid_api_key("sk-****"))?;
        if input_file_id.is_empty() {
            return Err(ApiError::missing_parameter("input_file_id"));
        }
        if endpoint.is_empty() {
            return Err(ApiError::missing_parameter("endpoint"));
        }
        if completion_window != "24h" {
            return Err(ApiError::invalid_value(
                "completion_window",
                "only '24h' is supported.",
            ));
        }
        if endpoint != CHAT_ENDPOINT {
            return Err(ApiError::invalid_value(
                "endpoint",
                "the model serves only '/v1/chat/completions'.",
            ));
        }
        let fidx = self.find_file(org, input_file_id)?;
        if self.files[fidx].purpose != "batch" {
            return Err(ApiError::invalid_value(
                "input_file_id",
                "the file's purpose must be 'batch'.",
            ));
        }
        let limits = InputLimits {
            max_requests: self.config.batch.max_requests,
            max_bytes: self.config.batch.max_file_bytes,
        };
        let parsed = match &self.files[fidx].content {
            Content::Uploaded(bytes) => jsonl::parse_batch_input(bytes, endpoint, limits),
            _ => Err(vec![]),
        };
        let mut cut_lines = Vec::new();
        let mut rejected = Vec::new();
        let (model, lines, doom) = match parsed {
            Ok(reqs) => {
                let model = reqs.first().map_or(org_model, |r| r.model);
                let lines = reqs
                    .into_iter()
                    .enumerate()
                    .map(|(i, r)| {
                        let tags = Tags::of(&r.image_url);
                        let (usage, finish) =
                            self.answer(r.model, r.max_tokens, r.text_chars, &r.images, tags);
                        let i = u32::try_from(i).unwrap_or(u32::MAX);
                        if finish == FinishReason::Length {
                            cut_lines.push(i);
                        }
                        // An invalid body still queues its input tokens (the batch was sized
                        // from the file) but fails when it runs, billing nothing.
                        if let Some(e) = r.rejected {
                            rejected.push((i, *e));
                        }
                        BatchLine {
                            charge_tokens: self.input_estimate(r.model, r.text_chars, &r.images),
                            custom_id: r.custom_id,
                            tags,
                            usage,
                        }
                    })
                    .collect();
                (model, lines, Doom::None)
            }
            Err(errors) => (org_model, Vec::new(), Doom::Invalid(errors)),
        };
        let idx = self.create_batch_state(
            now,
            org,
            model,
            input_file_id.to_owned(),
            lines,
            doom,
            Script::Take,
        )?;
        self.batches[idx].cut_lines = cut_lines;
        self.batches[idx].reject_lines(rejected);
        Ok(self.batch_view(now, idx))
    }
}

/// Whether a status has result files.
pub fn has_results(status: BatchStatus) -> bool {
    matches!(
        status,
        BatchStatus::Completed | BatchStatus::Expired | BatchStatus::Cancelled
    )
}

#[cfg(test)]
mod tests {
    use tagstorm_core::tokens::Model;

    use super::*;
    use crate::config::{AccountConfig, UpstreamConfig};

    const DAY: Time = Time::from_secs(86_400);

    #[test]
    fn a_pair_of_file_ids_is_two_ids_in_a_row() {
        let mut pairs = Upstream::new(UpstreamConfig::default(), 7).unwrap();
        let mut singles = Upstream::new(UpstreamConfig::default(), 7).unwrap();
        // Nothing is stored between the calls, so each later id first meets every earlier one.
        for _ in 0..5 {
            let (a, b) = pairs.fresh_file_id_pair();
            assert_eq!(a, singles.fresh_file_id());
            assert_eq!(b, singles.fresh_file_id());
            assert_ne!(a, b);
        }
        assert_eq!(pairs.file_by_id.len(), 10);
    }

    fn line(id: &str) -> String {
        format!(
            r#"{{"custom_id":"{id}","method":"POST","url":"/v1/chat/completions","body":{{"model":"gpt-4o-mini","max_tokens":60,"messages":[{{"role":"user","content":[{{"type":"image_url","image_url":{{"url":"https://img/{id}.jpg","detail":"low"}}}}]}}]}}}}"#
        )
    }

    fn ids(list: &FileList) -> Vec<&str> {
        list.data.iter().map(|f| f.id.as_str()).collect()
    }

    /// A line whose body the realtime endpoint refuses runs and fails with that 400, in the
    /// structured results too, counted as failed and not billed.
    #[test]
    fn an_invalid_body_fails_its_line_with_a_400() {
        let mut up = Upstream::new(UpstreamConfig::default(), 7).unwrap();
        let org = up
            .add_org(&AccountConfig::tier(Model::Gpt4oMini, 1))
            .unwrap();
        let bad = line("b").replace(r#""max_tokens":60"#, r#""max_tokens":60,"stream":true"#);
        let text = format!("{}\n{bad}\n{}\n", line("a"), line("c"));
        let input = up
            .upload_file(Time::ZERO, org, "in.jsonl", "batch", text.into_bytes())
            .unwrap()
            .id;
        let batch = up
            .create_batch(Time::ZERO, org, &input, CHAT_ENDPOINT, "24h")
            .unwrap();
        let done = up.retrieve_batch(DAY, org, &batch.id).unwrap();
        assert_eq!(done.status, BatchStatus::Completed);
        assert_eq!(
            done.request_counts,
            RequestCounts {
                total: 3,
                completed: 2,
                failed: 1
            }
        );
        let results = up.batch_results(DAY, org, &batch.id).unwrap();
        let outcomes: Vec<_> = results.lines.iter().map(|l| &l.outcome).collect();
        assert!(matches!(outcomes[0], LineOutcome::Ok { .. }));
        assert!(matches!(
            outcomes[1],
            LineOutcome::Err {
                status: Some(400),
                code: "invalid_request_error",
                ..
            }
        ));
        assert!(matches!(outcomes[2], LineOutcome::Ok { .. }));
        let billed: u64 = outcomes
            .iter()
            .filter_map(|o| match o {
                LineOutcome::Ok { usage, .. } => Some(usage.total()),
                LineOutcome::Err { .. } => None,
            })
            .sum();
        assert_eq!(done.usage.total_tokens, billed);
        let errors = up
            .file_content(DAY, org, done.error_file_id.as_deref().unwrap())
            .unwrap();
        let line: serde_json::Value = serde_json::from_slice(&errors).unwrap();
        assert_eq!(line["custom_id"], "b");
        assert_eq!(line["response"]["status_code"], 400);
        assert_eq!(line["response"]["body"]["error"]["param"], "stream");
    }

    /// A batch's output file is listed once the batch has ended, without the batch being
    /// retrieved first, and in creation order although it is stored after a later upload.
    #[test]
    fn list_files_orders_filters_and_pages() {
        let mut up = Upstream::new(UpstreamConfig::default(), 7).unwrap();
        let account = AccountConfig::tier(Model::Gpt4oMini, 1);
        let (org, other) = (up.add_org(&account).unwrap(), up.add_org(&account).unwrap());
        let upload = |up: &mut Upstream, org, at, name: &str, purpose: &str| {
            let text = format!("{}\n{}\n", line("a"), line("b"));
            up.upload_file(at, org, name, purpose, text.into_bytes())
                .unwrap()
                .id
        };
        let input = upload(&mut up, org, Time::ZERO, "in.jsonl", "batch");
        let vision = upload(&mut up, org, Time::ZERO, "img.png", "vision");
        upload(&mut up, other, Time::ZERO, "theirs.jsonl", "batch");
        let batch = up
            .create_batch(Time::ZERO, org, &input, CHAT_ENDPOINT, "24h")
            .unwrap();
        let late = upload(&mut up, org, DAY, "late.jsonl", "batch");
        let gone = upload(&mut up, org, DAY, "gone.jsonl", "batch");
        up.delete_file(DAY, org, &gone).unwrap();

        let list = |up: &mut Upstream, q: FileListQuery| up.list_files(DAY, org, &q);
        let all = list(&mut up, FileListQuery::default());
        let output = all.data[1].id.clone();
        assert_eq!(ids(&all), [&late, &output, &vision, &input]);
        assert_eq!(all.data[1].purpose, "batch_output");
        assert!(!all.has_more);
        assert_eq!(
            (all.first_id.as_deref(), all.last_id.as_deref()),
            (Some(late.as_str()), Some(input.as_str()))
        );
        let done = up.retrieve_batch(DAY, org, &batch.id).unwrap();
        assert_eq!(done.status, BatchStatus::Completed);
        assert_eq!(done.output_file_id.as_deref(), Some(output.as_str()));
        assert_eq!(Some(all.data[1].created_at), done.completed_at);

        let asc = |after: Option<&str>, limit| FileListQuery {
            order: ListOrder::Asc,
            after: after.map(str::to_owned),
            limit: Some(limit),
            ..FileListQuery::default()
        };
        // Ties (both uploads at zero) keep their upload order.
        let page = list(&mut up, asc(None, 2));
        assert_eq!((ids(&page), page.has_more), (vec![&*input, &*vision], true));
        let page = list(&mut up, asc(Some(&vision), 2));
        assert_eq!((ids(&page), page.has_more), (vec![&*output, &*late], false));
        for after in [gone.as_str(), "file-unknown", late.as_str()] {
            let page = list(&mut up, asc(Some(after), 2));
            assert_eq!(
                (page.data.len(), page.has_more, page.first_id),
                (0, false, None)
            );
        }
        let batch_only = FileListQuery {
            purpose: Some("batch".into()),
            ..FileListQuery::default()
        };
        assert_eq!(ids(&list(&mut up, batch_only)), [&late, &input]);
        let theirs = up.list_files(DAY, other, &FileListQuery::default());
        assert_eq!(theirs.data.len(), 1);
        assert_eq!(theirs.data[0].filename, "theirs.jsonl");
    }
}
