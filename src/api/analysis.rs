//! What an analysis request asks MI for (docs/service.md, "Analysis"), and the request body
//! it becomes. The command line's settings are validated
//! into an [`AnalysisRequest`] by the app layer, before anything is sent.

use serde_json::{Value, json};

/// Most person tags one request may name.
pub const MAX_TAGS: usize = 30;
/// Most people MI detects per asset.
pub const MAX_PERSONS: u8 = 10;

/// How long MI's scenes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SceneRange {
    ExtraShort,
    Short,
    Medium,
    Long,
}

impl SceneRange {
    fn word(self) -> &'static str {
        match self {
            SceneRange::ExtraShort => "EXTRA_SHORT",
            SceneRange::Short => "SHORT",
            SceneRange::Medium => "MEDIUM",
            SceneRange::Long => "LONG",
        }
    }
}

/// The language spoken in the media.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceLanguage {
    Enko,
    En,
    Ko,
    Ja,
    #[value(name = "zh-cn")]
    ZhCn,
    #[value(name = "zh-tw")]
    ZhTw,
}

impl SourceLanguage {
    fn word(self) -> &'static str {
        match self {
            SourceLanguage::Enko => "ENKO",
            SourceLanguage::En => "EN",
            SourceLanguage::Ko => "KO",
            SourceLanguage::Ja => "JA",
            SourceLanguage::ZhCn => "ZH-CN",
            SourceLanguage::ZhTw => "ZH-TW",
        }
    }
}

/// One validated analysis request, the same for every asset of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalysisRequest {
    pub person_count: u8,
    pub scene_range: Option<SceneRange>,
    /// Shortest and longest scene, in seconds (instead of a range).
    pub scene_seconds: Option<(u32, u32)>,
    pub language: Option<SourceLanguage>,
    pub audio_effects: bool,
    pub tag_ids: Vec<i64>,
}

impl AnalysisRequest {
    /// The body of `POST …/assets/{id}/index`.
    pub fn body(&self) -> Value {
        let mut body = json!({ "analysisPersonCount": self.person_count });
        if let Some(range) = self.scene_range {
            body["sceneRange"] = json!(range.word());
        }
        if let Some((min, max)) = self.scene_seconds {
            body["minSceneDurationSec"] = json!(min);
            body["maxSceneDurationSec"] = json!(max);
        }
        if let Some(language) = self.language {
            body["sourceLanguage"] = json!(language.word());
        }
        if self.audio_effects {
            body["detectAudioEffects"] = json!(true);
        }
        if !self.tag_ids.is_empty() {
            body["tagIdList"] = json!(self.tag_ids);
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_carries_only_what_was_asked() {
        let plain = AnalysisRequest {
            person_count: 0,
            scene_range: None,
            scene_seconds: None,
            language: None,
            audio_effects: false,
            tag_ids: Vec::new(),
        };
        assert_eq!(plain.body(), json!({"analysisPersonCount": 0}));
        let full = AnalysisRequest {
            person_count: 3,
            scene_range: Some(SceneRange::ExtraShort),
            language: Some(SourceLanguage::ZhCn),
            audio_effects: true,
            tag_ids: vec![7, 8],
            ..plain.clone()
        };
        assert_eq!(
            full.body(),
            json!({"analysisPersonCount": 3, "sceneRange": "EXTRA_SHORT", "sourceLanguage": "ZH-CN",
                   "detectAudioEffects": true, "tagIdList": [7, 8]})
        );
        let durations = AnalysisRequest {
            scene_seconds: Some((2, 8)),
            ..plain
        };
        assert_eq!(
            durations.body(),
            json!({"analysisPersonCount": 0, "minSceneDurationSec": 2, "maxSceneDurationSec": 8})
        );
    }
}
