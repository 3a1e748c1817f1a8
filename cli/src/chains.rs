//! The chain routes of the coordinator (`/v1/chains`) on `Client`: create, read, append, fork,
//! cancel. Wire types are the coordinator's own (`http::chain_views`).

use kontext_coordinator::http::chain_views::{
    ChainAccepted, ChainCancelReply, ChainView, ForkChain, TurnAccepted,
};
use kontext_proto::validate_chain::{ChainRequest, TurnRequest};

use crate::client::{Client, ClientError};

impl Client {
    /// `POST /v1/chains`.
    pub async fn create_chain(&self, chain: &ChainRequest) -> Result<ChainAccepted, ClientError> {
        let url = self.url("/v1/chains");
        let resp = self.send(&url, self.http.post(&url).json(chain)).await?;
        Self::json(&url, resp).await
    }

    /// `GET /v1/chains/{id}`.
    pub async fn chain(&self, id: &str) -> Result<ChainView, ClientError> {
        let url = self.url(&format!("/v1/chains/{id}"));
        let resp = self.send(&url, self.http.get(&url)).await?;
        Self::json(&url, resp).await
    }

    /// `POST /v1/chains/{id}/turns`.
    pub async fn append_turn(
        &self,
        id: &str,
        turn: &TurnRequest,
    ) -> Result<TurnAccepted, ClientError> {
        let url = self.url(&format!("/v1/chains/{id}/turns"));
        let resp = self.send(&url, self.http.post(&url).json(turn)).await?;
        Self::json(&url, resp).await
    }

    /// `POST /v1/chains/{id}/fork`.
    pub async fn fork_chain(
        &self,
        id: &str,
        fork: &ForkChain,
    ) -> Result<ChainAccepted, ClientError> {
        let url = self.url(&format!("/v1/chains/{id}/fork"));
        let resp = self.send(&url, self.http.post(&url).json(fork)).await?;
        Self::json(&url, resp).await
    }

    /// `POST /v1/chains/{id}/cancel`.
    pub async fn cancel_chain(&self, id: &str) -> Result<ChainCancelReply, ClientError> {
        let url = self.url(&format!("/v1/chains/{id}/cancel"));
        let resp = self.send(&url, self.http.post(&url)).await?;
        Self::json(&url, resp).await
    }
}
