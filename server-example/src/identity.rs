//! Who a request is for: the rules for a `user_id` field, in one place for inpainting,
//! history queries and fine-tune jobs.

use history_sink::event::MAX_USER_ID_LEN;

use crate::error::AppError;

/// The user id of requests that name none.
pub const ANONYMOUS: &str = "anonymous";

/// Trims a `user_id` field: `None` when absent or blank, 400 `bad_argument` when longer
/// than history's limit or when it holds control characters.
pub fn check_user_id(user_id: Option<String>) -> Result<Option<String>, AppError> {
    match user_id
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
    {
        Some(u) if u.len() > MAX_USER_ID_LEN || u.chars().any(char::is_control) => {
            Err(AppError::bad_request(
                "bad_argument",
                format!("user_id must be at most {MAX_USER_ID_LEN} bytes of printable text"),
            ))
        }
        u => Ok(u),
    }
}

/// A checked `user_id`, or [`ANONYMOUS`] when it names none.
pub fn user_or_anonymous(user_id: Option<String>) -> Result<String, AppError> {
    Ok(check_user_id(user_id)?.unwrap_or_else(|| ANONYMOUS.to_owned()))
}
