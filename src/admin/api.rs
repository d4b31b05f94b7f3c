//! The rollout API: list and read rollouts, and the commands that change them. Errors map to
//! HTTP statuses here and only here.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;

use super::AdminState;
use super::auth::bearer_matches;
use crate::controller::ControlError;
use crate::rollout::Command;

/// What can go wrong with an API call, and the status each maps to.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(&'static str),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error(
        "commands are disabled: no admin token is configured (set admin.token_file or TIDEGATE_ADMIN_TOKEN)"
    )]
    NoToken,
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Control(#[from] ControlError),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) | ApiError::Control(ControlError::UnknownRollout(_)) => {
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NoToken => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Control(ControlError::Refused(_)) => StatusCode::CONFLICT,
            ApiError::Control(ControlError::Store(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self.status() {
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::CONFLICT => "conflict",
            _ => "internal",
        }
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        #[derive(Serialize)]
        struct Body<'a> {
            error: String,
            code: &'a str,
        }
        let status = self.status();
        let mut resp = json(
            status,
            &Body {
                error: self.to_string(),
                code: self.code(),
            },
        );
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Serves `/api/v1/...`.
pub async fn handle(
    state: &AdminState,
    peer: SocketAddr,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let rest = path.trim_start_matches("/api/v1/").trim_end_matches('/');
    let parts: Vec<&str> = rest.split('/').collect();
    let Some(controller) = &state.controller else {
        return Err(ApiError::NotFound("this process runs no rollouts".into()));
    };
    // Reads are open on loopback; from elsewhere they need the token too.
    let authorized = state
        .token
        .as_deref()
        .is_some_and(|t| bearer_matches(headers, t));
    if !peer.ip().is_loopback() && !authorized {
        return Err(if state.token.is_some() {
            ApiError::Unauthorized
        } else {
            ApiError::NoToken
        });
    }
    match (method, parts.as_slice()) {
        (&Method::GET, ["rollouts"]) => {
            #[derive(Serialize)]
            struct List {
                rollouts: Vec<crate::rollout::RolloutStatus>,
            }
            Ok(json(
                StatusCode::OK,
                &List {
                    rollouts: controller.statuses(),
                },
            ))
        }
        (&Method::GET, ["rollouts", name]) => controller
            .status(name)
            .map(|s| json(StatusCode::OK, &s))
            .ok_or_else(|| ControlError::UnknownRollout(name.to_string()).into()),
        (&Method::POST, ["rollouts", name, verb]) => {
            let full = query.is_some_and(|q| q.split('&').any(|p| p == "full=true" || p == "full"));
            let cmd = match *verb {
                "promote" => Command::Promote { full },
                "abort" => Command::Abort,
                "pause" => Command::Pause,
                "resume" => Command::Resume,
                "retry" => Command::Retry,
                "restart" => Command::Restart,
                other => {
                    return Err(ApiError::NotFound(format!(
                        "no command `{other}`: use promote, abort, pause, resume, retry or restart"
                    )));
                }
            };
            match &state.token {
                None => return Err(ApiError::NoToken),
                Some(_) if !authorized => return Err(ApiError::Unauthorized),
                Some(_) => {}
            }
            if full && cmd != (Command::Promote { full: true }) {
                return Err(ApiError::BadRequest(
                    "`full` applies to promote only".into(),
                ));
            }
            let status = controller.command(name, cmd).await?;
            Ok(json(StatusCode::OK, &status))
        }
        (_, ["rollouts"] | ["rollouts", _]) => Err(ApiError::MethodNotAllowed("only GET here")),
        (
            _,
            [
                "rollouts",
                _,
                "promote" | "abort" | "pause" | "resume" | "retry" | "restart",
            ],
        ) => Err(ApiError::MethodNotAllowed("commands are POST")),
        _ => Err(ApiError::NotFound(path.to_string())),
    }
}
