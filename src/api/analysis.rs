//! What an analysis request asks MI for (NCP-API.md, "Analysis: after registration, the
//! index"): validated once, before anything is sent, and turned into the request body.

use anyhow::{Result, bail};
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
    /// Validates the command line's analysis settings.
    pub fn from_args(args: &crate::cli::AnalysisArgs) -> Result<Self> {
        let Some(person_count) = args.analysis_person_count else {
            bail!(
                "--analysis-person-count is required with --analyze\nhint: 0 skips person analysis (faster), up to {MAX_PERSONS}"
            );
        };
        if person_count > MAX_PERSONS {
            bail!(
                "--analysis-person-count {person_count} is more than MI takes\nhint: 0 to {MAX_PERSONS}"
            );
        }
        let scene_seconds = match (args.min_scene_duration, args.max_scene_duration) {
            (None, None) => None,
            (Some(min), Some(max)) if min >= 1 && min <= max => Some((min, max)),
            (Some(min), Some(max)) => bail!(
                "--min-scene-duration {min} and --max-scene-duration {max} are no range\nhint: both in seconds, at least 1, the first not above the second"
            ),
            _ => bail!(
                "--min-scene-duration and --max-scene-duration go together\nhint: give both, or use --scene-range"
            ),
        };
        if scene_seconds.is_some() && args.scene_range.is_some() {
            bail!(
                "--scene-range and the scene durations exclude each other\nhint: give --scene-range, or --min-scene-duration with --max-scene-duration"
            );
        }
        if args.tag_ids.len() > MAX_TAGS {
            bail!(
                "{} person tags given; MI takes at most {MAX_TAGS}\nhint: split the tags over several analyses",
                args.tag_ids.len()
            );
        }
        Ok(Self {
            person_count,
            scene_range: args.scene_range,
            scene_seconds,
            language: args.source_language,
            audio_effects: args.detect_audio_effects,
            tag_ids: args.tag_ids.clone(),
        })
    }

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
    use crate::cli::AnalysisArgs;

    fn args() -> AnalysisArgs {
        AnalysisArgs {
            analyze: true,
            analysis_person_count: Some(0),
            scene_range: None,
            source_language: None,
            detect_audio_effects: false,
            tag_ids: Vec::new(),
            min_scene_duration: None,
            max_scene_duration: None,
            reanalyze_failed: false,
        }
    }

    #[test]
    fn the_body_carries_only_what_was_asked() {
        let request = AnalysisRequest::from_args(&args()).unwrap();
        assert_eq!(request.body(), json!({"analysisPersonCount": 0}));
        let full = AnalysisArgs {
            analysis_person_count: Some(3),
            scene_range: Some(SceneRange::ExtraShort),
            source_language: Some(SourceLanguage::ZhCn),
            detect_audio_effects: true,
            tag_ids: vec![7, 8],
            ..args()
        };
        assert_eq!(
            AnalysisRequest::from_args(&full).unwrap().body(),
            json!({"analysisPersonCount": 3, "sceneRange": "EXTRA_SHORT", "sourceLanguage": "ZH-CN",
                   "detectAudioEffects": true, "tagIdList": [7, 8]})
        );
    }

    #[test]
    fn bad_settings_are_refused_with_a_hint() {
        let cases = [
            AnalysisArgs {
                analysis_person_count: None,
                ..args()
            },
            AnalysisArgs {
                analysis_person_count: Some(11),
                ..args()
            },
            AnalysisArgs {
                min_scene_duration: Some(5),
                ..args()
            },
            AnalysisArgs {
                min_scene_duration: Some(9),
                max_scene_duration: Some(3),
                ..args()
            },
            AnalysisArgs {
                min_scene_duration: Some(1),
                max_scene_duration: Some(3),
                scene_range: Some(SceneRange::Long),
                ..args()
            },
            AnalysisArgs {
                tag_ids: (0..31).collect(),
                ..args()
            },
        ];
        for case in cases {
            let err = AnalysisRequest::from_args(&case).unwrap_err().to_string();
            assert!(err.contains("hint:"), "{err}");
        }
        let durations = AnalysisArgs {
            min_scene_duration: Some(2),
            max_scene_duration: Some(8),
            ..args()
        };
        assert_eq!(
            AnalysisRequest::from_args(&durations).unwrap().body(),
            json!({"analysisPersonCount": 0, "minSceneDurationSec": 2, "maxSceneDurationSec": 8})
        );
    }
}
