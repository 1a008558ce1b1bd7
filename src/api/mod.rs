//! Talking to Media Intelligence: the signature, the calls, and what their errors mean.

pub mod client;
pub mod error;
pub mod local;
pub mod signer;

pub use client::{
    AnalysisStatus, AssetDetails, AssetPage, AssetSummary, ImportStatus, MiClient, Registered,
};
pub use error::{Answer, ApiError, Call};
pub mod analysis;
