//! `GET /v1/models` and `GET /v1/models/{id}`: the models the behaviour model knows.

use serde_json::json;
use tagstorm_core::tokens::Model;

use crate::error::ApiError;
use crate::server::Delivery;
use crate::server::http::Reply;

/// Release dates of the models (Unix seconds), as OpenAI's model objects show them.
fn created(model: Model) -> u64 {
    match model {
        Model::Gpt4oMini => 1_721_172_741,
        Model::Gpt4o => 1_715_367_049,
    }
}

fn object(model: Model) -> serde_json::Value {
    json!({"id": model.as_str(), "object": "model", "created": created(model), "owned_by": "system"})
}

/// The list, or one model (`id`); an unknown id is a 404 `model_not_found`.
pub(crate) fn get(id: Option<&str>) -> Delivery {
    match id {
        None => {
            let data: Vec<_> = Model::ALL.into_iter().map(object).collect();
            Reply::value(&json!({"object": "list", "data": data})).into()
        }
        Some(id) => match Model::from_name(id) {
            Some(m) => Reply::value(&object(m)).into(),
            None => ApiError::model_not_found(id).into(),
        },
    }
}
