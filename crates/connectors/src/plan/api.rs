//! `GET /api/v1/plan[?campaign=<name>&connector=<id>]`: the plan computed now from the model (the JSON
//! shape is documented in the module doc of [`super`]). With several `capacity_planner` connectors,
//! `connector=<id>` picks one (the first registered answers otherwise); `campaign=<name>` keeps one campaign.

use std::sync::{Arc, Mutex, PoisonError};

use bizpilot_core::{ApiHandler, ApiResponse};

use super::config::CapacityPlannerConfig;
use super::model::Model;
use super::planner;

/// The API of one connector.
pub struct PlanApi {
    connector: String,
    config: Arc<CapacityPlannerConfig>,
    model: Arc<Mutex<Model>>,
}

impl PlanApi {
    pub fn new(connector: String, config: Arc<CapacityPlannerConfig>, model: Arc<Mutex<Model>>) -> Self {
        PlanApi {
            connector,
            config,
            model,
        }
    }
}

impl ApiHandler for PlanApi {
    fn handle(&self, path: &str, query: &[(String, String)]) -> Option<ApiResponse> {
        if path.trim_end_matches('/') != "plan" {
            return None;
        }
        let param = |k: &str| query.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
        if let Some(c) = param("connector")
            && c != self.connector
        {
            return None;
        }
        let observed = self.model.lock().unwrap_or_else(PoisonError::into_inner).observed();
        let mut plan = planner::plan(&self.connector, &self.config, &observed);
        if let Some(name) = param("campaign") {
            plan.campaigns.retain(|c| c.name == name);
            if plan.campaigns.is_empty() {
                let known: Vec<&str> = self.config.campaigns.iter().map(|c| c.name.as_str()).collect();
                return Some(ApiResponse::error(
                    404,
                    format!("no campaign {name:?} (campaigns: {})", known.join(", ")),
                ));
            }
        }
        Some(match serde_json::to_value(&plan) {
            Ok(v) => ApiResponse::ok(v),
            Err(e) => ApiResponse::error(500, format!("cannot render the plan: {e}")),
        })
    }
}
