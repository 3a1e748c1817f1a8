//! Decoding what the scripts return: tagged replies (`{'status', ...}`) and job hashes. Anything
//! that does not decode is `QueueError::Corrupt` naming the field, never a panic.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use redis::Value;
use serde::de::DeserializeOwned;

use crate::error::QueueError;
use crate::ids::ChainId;
use crate::job::{JobId, JobRecord, JobStatus};

fn corrupt(what: impl Into<String>) -> QueueError {
    QueueError::Corrupt(what.into())
}

pub(crate) fn backend(e: redis::RedisError) -> QueueError {
    QueueError::Backend(Box::new(e))
}

/// Failures of the Redis backend that are not a `redis::RedisError`; the source of a
/// `QueueError::Backend`.
#[derive(Debug, thiserror::Error)]
pub enum RedisFailure {
    /// A command gave no reply within its bound; its connection is dropped, not reused.
    #[error("{what} gave no reply within {after:?}")]
    NoReply { what: &'static str, after: Duration },
    /// Concurrent appends kept changing the chain between our read and our write.
    #[error("chain {chain}: gave up appending after {tries} concurrent appends")]
    AppendContention { chain: ChainId, tries: usize },
}

impl From<RedisFailure> for QueueError {
    fn from(e: RedisFailure) -> Self {
        QueueError::Backend(Box::new(e))
    }
}

pub(crate) fn text(v: &Value) -> Result<String, QueueError> {
    match v {
        Value::BulkString(b) => {
            String::from_utf8(b.clone()).map_err(|_| corrupt("non-UTF-8 reply"))
        }
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Int(i) => Ok(i.to_string()),
        Value::Okay => Ok("OK".into()),
        other => Err(corrupt(format!("expected a string, got {other:?}"))),
    }
}

/// A job id a script returned.
pub(crate) fn job_id(v: &Value) -> Result<JobId, QueueError> {
    let raw = text(v)?;
    raw.parse()
        .map_err(|_| QueueError::Corrupt(format!("bad job id {raw:?}")))
}

pub(crate) fn int(v: &Value) -> Result<i64, QueueError> {
    match v {
        Value::Int(i) => Ok(*i),
        other => text(other)?
            .parse()
            .map_err(|_| corrupt(format!("expected an integer, got {other:?}"))),
    }
}

pub(crate) fn array(v: &Value) -> Result<&[Value], QueueError> {
    match v {
        Value::Array(items) => Ok(items),
        other => Err(corrupt(format!("expected an array, got {other:?}"))),
    }
}

/// A `{'tag', rest...}` script reply.
pub(crate) fn tagged(v: &Value) -> Result<(String, &[Value]), QueueError> {
    let items = array(v)?;
    let (tag, rest) = items
        .split_first()
        .ok_or_else(|| corrupt("empty script reply"))?;
    Ok((text(tag)?, rest))
}

/// The element at `i` of a tagged reply's rest.
pub(crate) fn at(rest: &[Value], i: usize) -> Result<&Value, QueueError> {
    rest.get(i)
        .ok_or_else(|| corrupt(format!("script reply lacks element {i}")))
}

/// A flat `HGETALL` array as a map.
pub(crate) fn hash(v: &Value) -> Result<HashMap<String, String>, QueueError> {
    let items = array(v)?;
    if items.len() % 2 != 0 {
        return Err(corrupt("odd-length hash reply"));
    }
    items
        .chunks_exact(2)
        .map(|kv| Ok((text(&kv[0])?, text(&kv[1])?)))
        .collect()
}

pub(crate) fn field<'a>(h: &'a HashMap<String, String>, name: &str) -> Result<&'a str, QueueError> {
    h.get(name)
        .map(String::as_str)
        .ok_or_else(|| corrupt(format!("hash lacks {name}")))
}

pub(crate) fn parsed<T: FromStr>(h: &HashMap<String, String>, name: &str) -> Result<T, QueueError> {
    let raw = field(h, name)?;
    raw.parse()
        .map_err(|_| corrupt(format!("field {name} = {raw:?} does not parse")))
}

pub(crate) fn optional<T: FromStr>(
    h: &HashMap<String, String>,
    name: &str,
) -> Result<Option<T>, QueueError> {
    match h.get(name).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(_) => parsed(h, name).map(Some),
    }
}

pub(crate) fn json<T: DeserializeOwned>(
    h: &HashMap<String, String>,
    name: &str,
) -> Result<Option<T>, QueueError> {
    match h.get(name).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(raw) => serde_json::from_str(raw)
            .map(Some)
            .map_err(|e| corrupt(format!("field {name} is not valid JSON: {e}"))),
    }
}

/// A job hash (see the field list in `keys.rs` and `submit.lua`) as a record.
pub(crate) fn record(h: &HashMap<String, String>) -> Result<JobRecord, QueueError> {
    let id: JobId = parsed(h, "id")?;
    Ok(JobRecord {
        id,
        tenant: field(h, "tenant")?.to_owned(),
        status: parsed::<JobStatus>(h, "state")?,
        spec: json(h, "spec")?.ok_or_else(|| corrupt(format!("job {id} lacks its spec")))?,
        progress: parsed(h, "progress")?,
        attempts: parsed(h, "attempts")?,
        crashes: parsed(h, "crashes")?,
        epoch: parsed(h, "epoch")?,
        cancel_requested: field(h, "cancel")? == "1",
        created_at: parsed(h, "created_at")?,
        started_at: optional(h, "started_at")?,
        finished_at: optional(h, "finished_at")?,
        worker: h.get("worker").filter(|w| !w.is_empty()).cloned(),
        result: json(h, "result")?,
        error: json(h, "error")?,
        chain: json(h, "chain")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn tagged_replies_split_tag_and_rest() {
        let v = Value::Array(vec![bulk("retry"), Value::Int(5)]);
        let (tag, rest) = tagged(&v).expect("tagged");
        assert_eq!(tag, "retry");
        assert_eq!(int(at(rest, 0).expect("element")).expect("int"), 5);
        assert!(tagged(&Value::Array(vec![])).is_err());
    }

    #[test]
    fn corrupt_hashes_are_errors_not_panics() {
        let v = Value::Array(vec![bulk("id"), bulk("not-a-uuid")]);
        let h = hash(&v).expect("hash");
        assert!(matches!(record(&h), Err(QueueError::Corrupt(_))));
        assert!(hash(&Value::Array(vec![bulk("odd")])).is_err());
    }
}
