//! The history event: what every sink stores and what travels on Kafka as JSON.
//!
//! The wire format is documented in `docs/history.md`.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{HistoryError, Result};

/// The schema version this build writes. Readers accept any version up to this one.
pub const SCHEMA_VERSION: u16 = 1;

/// Longest accepted `user_id`, in bytes (the MySQL column is `VARCHAR(128)`).
pub const MAX_USER_ID_LEN: usize = 128;

/// Longest accepted URI, in bytes.
pub const MAX_URI_LEN: usize = 1024;

/// Longest accepted short text field (model id/version, strategy, device), in bytes.
pub const MAX_LABEL_LEN: usize = 255;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A reconstruction (one per accepted inpainting request).
    Inpaint,
    /// A fine-tuning run.
    Finetune,
    /// An image upload.
    Upload,
}

impl EventKind {
    /// The lowercase name used on the wire and in the databases.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inpaint => "inpaint",
            Self::Finetune => "finetune",
            Self::Upload => "upload",
        }
    }
}

impl std::str::FromStr for EventKind {
    type Err = HistoryError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "inpaint" => Ok(Self::Inpaint),
            "finetune" => Ok(Self::Finetune),
            "upload" => Ok(Self::Upload),
            other => Err(HistoryError::InvalidEvent(format!(
                "unknown kind {other:?}"
            ))),
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How it ended. On the wire: `"status": "ok"` or `"status": "error", "error": "message"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum EventStatus {
    /// Success.
    Ok,
    /// Failure, with a human-readable message.
    Error {
        /// What went wrong.
        error: String,
    },
}

impl EventStatus {
    /// `"ok"` or `"error"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error { .. } => "error",
        }
    }

    /// The error message, if any.
    pub fn error_message(&self) -> Option<&str> {
        match self {
            Self::Ok => None,
            Self::Error { error } => Some(error),
        }
    }

    /// Rebuilds a status from its stored columns.
    pub fn from_parts(status: &str, message: Option<String>) -> Result<Self> {
        match status {
            "ok" => Ok(Self::Ok),
            "error" => Ok(Self::Error {
                error: message.unwrap_or_default(),
            }),
            other => Err(HistoryError::InvalidEvent(format!(
                "unknown status {other:?}"
            ))),
        }
    }
}

/// One entry of a user's history.
///
/// Build one with [`HistoryEvent::new`] (or [`HistoryEvent::inpaint`], [`HistoryEvent::upload`],
/// [`HistoryEvent::finetune`]) and the `with_*` methods:
///
/// ```
/// use history_sink::{EventKind, HistoryEvent};
/// let ev = HistoryEvent::inpaint("alice")
///     .with_images(Some("file:///s/a.png".into()), Some("file:///s/m.png".into()), None)
///     .with_dimensions(512, 512)
///     .with_hole_ratio(0.25)
///     .with_model("pconv-unet", "1.0.0")
///     .with_latency_ms(42);
/// assert_eq!(ev.kind, EventKind::Inpaint);
/// ev.validate().unwrap();
/// let wire = ev.to_json().unwrap();
/// assert_eq!(HistoryEvent::from_json(&wire).unwrap(), ev);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEvent {
    /// UUIDv7: unique, and time-ordered.
    pub event_id: Uuid,
    /// Version of this schema the event was written with ([`SCHEMA_VERSION`]).
    pub schema_version: u16,
    /// What happened.
    pub kind: EventKind,
    /// Who did it.
    pub user_id: String,
    /// When, in UTC with millisecond precision (RFC 3339 on the wire).
    #[serde(with = "rfc3339_ms")]
    pub occurred_at: DateTime<Utc>,
    /// URI of the original image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_uri: Option<String>,
    /// URI of the mask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_uri: Option<String>,
    /// URI of the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_uri: Option<String>,
    /// Image width in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Image height in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// Fraction of the image that is hole, in `[0, 1]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hole_ratio: Option<f64>,
    /// Model identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    /// Model version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// Inference strategy (e.g. `whole`, `tiled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// Device the work ran on (e.g. `cpu`, `cuda:0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Wall time of the work, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// The event whose result this one edited further (the page's "Continue from result"),
    /// always one of the same user's. Absent for a first edit, and in events written before
    /// the field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_event_id: Option<Uuid>,
    /// `ok`, or `error` with a message.
    #[serde(flatten)]
    pub status: EventStatus,
}

impl HistoryEvent {
    /// A new event with a fresh UUIDv7, the current time (truncated to ms) and status `ok`.
    pub fn new(kind: EventKind, user_id: impl Into<String>) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            schema_version: SCHEMA_VERSION,
            kind,
            user_id: user_id.into(),
            occurred_at: now_ms(),
            original_uri: None,
            mask_uri: None,
            result_uri: None,
            width: None,
            height: None,
            hole_ratio: None,
            model_id: None,
            model_version: None,
            strategy: None,
            device: None,
            latency_ms: None,
            parent_event_id: None,
            status: EventStatus::Ok,
        }
    }

    /// `HistoryEvent::new(EventKind::Inpaint, user_id)`.
    pub fn inpaint(user_id: impl Into<String>) -> Self {
        Self::new(EventKind::Inpaint, user_id)
    }

    /// `HistoryEvent::new(EventKind::Upload, user_id)`.
    pub fn upload(user_id: impl Into<String>) -> Self {
        Self::new(EventKind::Upload, user_id)
    }

    /// `HistoryEvent::new(EventKind::Finetune, user_id)`.
    pub fn finetune(user_id: impl Into<String>) -> Self {
        Self::new(EventKind::Finetune, user_id)
    }

    /// Sets the time (truncated to milliseconds).
    pub fn with_occurred_at(mut self, at: DateTime<Utc>) -> Self {
        self.occurred_at = truncate_ms(at);
        self
    }

    /// Sets the image URIs.
    pub fn with_images(
        mut self,
        original: Option<String>,
        mask: Option<String>,
        result: Option<String>,
    ) -> Self {
        self.original_uri = original;
        self.mask_uri = mask;
        self.result_uri = result;
        self
    }

    /// Sets the result URI only.
    pub fn with_result_uri(mut self, uri: impl Into<String>) -> Self {
        self.result_uri = Some(uri.into());
        self
    }

    /// Sets width and height.
    pub fn with_dimensions(mut self, width: u32, height: u32) -> Self {
        self.width = Some(width);
        self.height = Some(height);
        self
    }

    /// Sets the hole ratio.
    pub fn with_hole_ratio(mut self, ratio: f64) -> Self {
        self.hole_ratio = Some(ratio);
        self
    }

    /// Sets model id and version.
    pub fn with_model(mut self, id: impl Into<String>, version: impl Into<String>) -> Self {
        self.model_id = Some(id.into());
        self.model_version = Some(version.into());
        self
    }

    /// Sets the event this one continues from.
    pub fn with_parent(mut self, parent: Uuid) -> Self {
        self.parent_event_id = Some(parent);
        self
    }

    /// Sets the inference strategy.
    pub fn with_strategy(mut self, strategy: impl Into<String>) -> Self {
        self.strategy = Some(strategy.into());
        self
    }

    /// Sets the device.
    pub fn with_device(mut self, device: impl Into<String>) -> Self {
        self.device = Some(device.into());
        self
    }

    /// Sets the latency.
    pub fn with_latency_ms(mut self, ms: u64) -> Self {
        self.latency_ms = Some(ms);
        self
    }

    /// Marks the event as failed.
    pub fn with_error(mut self, message: impl Into<String>) -> Self {
        self.status = EventStatus::Error {
            error: message.into(),
        };
        self
    }

    /// Checks the rules that the types alone do not: versions, lengths, ranges.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(HistoryError::InvalidEvent(m));
        if self.schema_version == 0 || self.schema_version > SCHEMA_VERSION {
            return bad(format!(
                "schema_version {} not supported (this build reads 1..={SCHEMA_VERSION})",
                self.schema_version
            ));
        }
        if self.event_id.is_nil() {
            return bad("event_id is nil".into());
        }
        if self.user_id.is_empty() || self.user_id.len() > MAX_USER_ID_LEN {
            return bad(format!(
                "user_id must be 1..={MAX_USER_ID_LEN} bytes, got {}",
                self.user_id.len()
            ));
        }
        if self.user_id.chars().any(char::is_control) {
            return bad("user_id contains control characters".into());
        }
        for (name, uri) in [
            ("original_uri", &self.original_uri),
            ("mask_uri", &self.mask_uri),
            ("result_uri", &self.result_uri),
        ] {
            if uri.as_ref().is_some_and(|u| u.len() > MAX_URI_LEN) {
                return bad(format!("{name} is longer than {MAX_URI_LEN} bytes"));
            }
        }
        for (name, label) in [
            ("model_id", &self.model_id),
            ("model_version", &self.model_version),
            ("strategy", &self.strategy),
            ("device", &self.device),
        ] {
            if label.as_ref().is_some_and(|l| l.len() > MAX_LABEL_LEN) {
                return bad(format!("{name} is longer than {MAX_LABEL_LEN} bytes"));
            }
        }
        if let Some(r) = self.hole_ratio {
            if !(0.0..=1.0).contains(&r) {
                return bad(format!("hole_ratio {r} is outside [0, 1]"));
            }
        }
        if self.latency_ms.is_some_and(|l| l > i64::MAX as u64) {
            return bad("latency_ms out of range".into());
        }
        let ms = self.occurred_at.timestamp_millis();
        // MySQL DATETIME spans years 1000..=9999; keep to 1970..=9999 for both backends.
        if !(0..=253_402_300_799_999).contains(&ms) {
            return bad(format!("occurred_at {} out of range", self.occurred_at));
        }
        Ok(())
    }

    /// Encodes as the JSON wire format.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec(self)?)
    }

    /// Decodes the JSON wire format and validates the result.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let ev: Self = serde_json::from_slice(bytes)?;
        ev.validate()?;
        Ok(ev)
    }

    /// Milliseconds since the Unix epoch.
    pub fn occurred_at_ms(&self) -> i64 {
        self.occurred_at.timestamp_millis()
    }
}

/// The current UTC time, truncated to milliseconds.
pub fn now_ms() -> DateTime<Utc> {
    truncate_ms(Utc::now())
}

/// Truncates to whole milliseconds.
pub fn truncate_ms(at: DateTime<Utc>) -> DateTime<Utc> {
    from_ms(at.timestamp_millis())
}

/// Milliseconds since the epoch to a UTC time (saturating at the epoch for absurd input).
pub(crate) fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

mod rfc3339_ms {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let at = DateTime::parse_from_rfc3339(&s).map_err(serde::de::Error::custom)?;
        Ok(super::truncate_ms(at.with_timezone(&Utc)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_stable() {
        let ev = HistoryEvent {
            event_id: Uuid::parse_str("01936b1e-7c00-7000-8000-000000000001").unwrap(),
            occurred_at: from_ms(1_732_608_000_123),
            ..HistoryEvent::inpaint("u1")
        }
        .with_error("boom");
        let v: serde_json::Value = serde_json::from_slice(&ev.to_json().unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "event_id": "01936b1e-7c00-7000-8000-000000000001",
                "schema_version": 1,
                "kind": "inpaint",
                "user_id": "u1",
                "occurred_at": "2024-11-26T08:00:00.123Z",
                "status": "error",
                "error": "boom"
            })
        );
    }

    #[test]
    fn round_trip_full() {
        let ev = HistoryEvent::finetune("bob")
            .with_images(Some("a".into()), Some("b".into()), Some("c".into()))
            .with_dimensions(3, 4)
            .with_hole_ratio(0.5)
            .with_model("m", "v")
            .with_strategy("tiled")
            .with_device("cpu")
            .with_latency_ms(7);
        assert_eq!(HistoryEvent::from_json(&ev.to_json().unwrap()).unwrap(), ev);
    }

    #[test]
    fn timestamps_are_truncated_to_ms_and_accept_offsets() {
        let json = br#"{"event_id":"01936b1e-7c00-7000-8000-000000000001","schema_version":1,
            "kind":"upload","user_id":"u","occurred_at":"2024-11-26T09:00:00.123456+01:00","status":"ok"}"#;
        let ev = HistoryEvent::from_json(json).unwrap();
        assert_eq!(ev.occurred_at_ms(), 1_732_608_000_123);
    }

    #[test]
    fn unknown_fields_are_ignored_for_forward_compatibility() {
        let json = br#"{"event_id":"01936b1e-7c00-7000-8000-000000000001","schema_version":1,
            "kind":"upload","user_id":"u","occurred_at":"2024-11-26T08:00:00Z","status":"ok","extra":1}"#;
        assert!(HistoryEvent::from_json(json).is_ok());
    }

    #[test]
    fn validation_rejects_bad_events() {
        let ok = HistoryEvent::upload("u");
        assert!(ok.validate().is_ok());
        let cases = [
            HistoryEvent {
                schema_version: 2,
                ..ok.clone()
            },
            HistoryEvent {
                user_id: String::new(),
                ..ok.clone()
            },
            HistoryEvent {
                user_id: "x".repeat(129),
                ..ok.clone()
            },
            HistoryEvent {
                user_id: "a\nb".into(),
                ..ok.clone()
            },
            ok.clone().with_hole_ratio(1.5),
            ok.clone().with_hole_ratio(f64::NAN),
            HistoryEvent {
                event_id: Uuid::nil(),
                ..ok.clone()
            },
            ok.clone().with_result_uri("x".repeat(2000)),
        ];
        for c in cases {
            assert!(
                matches!(c.validate(), Err(HistoryError::InvalidEvent(_))),
                "{c:?}"
            );
        }
    }

    #[test]
    fn malformed_json_is_an_error() {
        assert!(matches!(
            HistoryEvent::from_json(b"not json"),
            Err(HistoryError::Json(_))
        ));
        assert!(HistoryEvent::from_json(br#"{"kind":"inpaint"}"#).is_err());
        assert!(HistoryEvent::from_json(
            br#"{"event_id":"01936b1e-7c00-7000-8000-000000000001","schema_version":1,
            "kind":"delete","user_id":"u","occurred_at":"2024-11-26T08:00:00Z","status":"ok"}"#
        )
        .is_err());
    }

    #[test]
    fn event_ids_are_v7_and_ordered() {
        let a = HistoryEvent::upload("u");
        let b = HistoryEvent::upload("u");
        assert_eq!(a.event_id.get_version_num(), 7);
        assert!(a.event_id < b.event_id);
    }
}
