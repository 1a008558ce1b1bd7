//! The command line's settings turned into the parts' own types: the analysis a command asks
//! for, the emulator a user serves, the protocol's floors. The parts below the app layer never
//! see the command line's types (`crate::cli`); what they take is validated here, before
//! anything is sent. The one exception is deliberate: six small enums of the parts
//! (`ManifestFormat`, `OnChanged`, `ReportFormat`, `FileNameMode`, and the analysis's scene
//! range and language) derive `clap::ValueEnum`, so the command line takes their values as
//! they are rather than through a copy of each in `cli`.

use anyhow::{Result, bail};

use crate::api::analysis::{AnalysisRequest, MAX_PERSONS, MAX_TAGS};
use crate::cli::{AnalysisArgs, EmulatorArgs};
use crate::config::Credentials;
use crate::emulator::EmulatorConfig;
use crate::exit::input;
use crate::ledger::analyses::Pick;
use crate::runner::pace::FLOORS_VARIABLE;
use crate::runner::{AnalysisPlan, Floors};

/// The analysis a command asks for, validated before anything is sent; `None` without
/// `--analyze` (unless the command is `analyze` itself, `always`).
/// The protocol's floors: today's values, or those the hidden `MI_IMPORT_FLOORS` lowers (for
/// the tests, against the emulator: docs/design.md, "Floors").
pub fn floors() -> Result<Floors> {
    let text = match std::env::var(FLOORS_VARIABLE) {
        Err(std::env::VarError::NotPresent) => return Ok(Floors::default()),
        Err(e) => return Err(input(anyhow::anyhow!("{FLOORS_VARIABLE}: {e}"))),
        Ok(text) => text,
    };
    let floors = Floors::lowered(&text).map_err(|e| {
        input(anyhow::anyhow!(
            "{FLOORS_VARIABLE}: {}\nhint: unset it: it lowers safety margins for the tests, never for a real account",
            crate::escape::shown(&e)
        ))
    })?;
    if floors.are_lowered() {
        tracing::warn!(
            "{FLOORS_VARIABLE} lowers the protocol's waits ({floors:?}): for tests against the emulator, never for a real account"
        );
    }
    Ok(floors)
}

pub fn analysis_plan(args: &AnalysisArgs, always: bool) -> Result<Option<AnalysisPlan>> {
    if !(always || args.analyze) {
        let given = args.analysis_person_count.is_some()
            || args.scene_range.is_some()
            || args.source_language.is_some()
            || args.detect_audio_effects
            || !args.tag_ids.is_empty()
            || args.min_scene_duration.is_some()
            || args.max_scene_duration.is_some()
            || args.reanalyze_failed;
        if given {
            return Err(input(anyhow::anyhow!(
                "analysis settings were given without --analyze\nhint: add --analyze to request analysis of the keys that complete"
            )));
        }
        return Ok(None);
    }
    let request = analysis_request(args)
        .map_err(|e| match (always, args.analysis_person_count) {
            (true, None) => anyhow::anyhow!(
                "--analysis-person-count is required: how many people MI looks for in each asset\nhint: 0 skips person analysis (faster), up to {MAX_PERSONS}"
            ),
            _ => e,
        })
        .map_err(input)?;
    Ok(Some(AnalysisPlan {
        request,
        pick: Pick {
            again_failed: args.reanalyze_failed,
            // A run analyses what it completes and what runs with --analyze sent; the
            // `analyze` command, every completed key.
            asked_only: !always,
        },
    }))
}

/// Validates the command line's analysis settings.
fn analysis_request(args: &AnalysisArgs) -> Result<AnalysisRequest> {
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
    Ok(AnalysisRequest {
        person_count,
        scene_range: args.scene_range,
        scene_seconds,
        language: args.source_language,
        audio_effects: args.detect_audio_effects,
        tag_ids: args.tag_ids.clone(),
    })
}

/// The emulator as `mi-import emulator` was asked to serve it.
pub fn emulator_config(args: &EmulatorArgs, credentials: Credentials) -> Result<EmulatorConfig> {
    let sizes = match &args.sizes {
        Some(path) => crate::emulator::read_sizes(path)?,
        None => Default::default(),
    };
    let preload = match &args.preload {
        Some(path) => crate::emulator::read_preload(path)?,
        None => Vec::new(),
    };
    Ok(EmulatorConfig {
        workspace: args.workspace.clone(),
        project: args.project.clone(),
        bucket: args.bucket.clone(),
        latency: (args.latency, args.latency),
        rate_429: args.rate_429,
        rate_503: args.rate_503,
        fail_after_create: args.fail_after_create,
        drop_before: args.drop_before,
        drop_after: args.drop_after,
        rate_limit: args.rate_limit,
        import_time: args.import_time,
        import_time_per_gb: args.import_time_per_gb,
        file_name: args.file_name,
        list_lag: args.list_lag,
        list_created_time: !args.list_without_time,
        list_size: !args.list_without_size,
        list_upload_status: args.list_upload_status,
        random_ids: args.random_ids,
        list_newest_first: args.list_newest_first,
        list_without_total_page: args.list_without_total_page,
        list_churn: args.list_churn,
        normalize_names: args.normalize_names,
        details_key: !args.details_without_key,
        sizes,
        preload,
        analysis_polls: args.analysis_polls,
        analysis_time: args.analysis_time,
        analysis_time_per_gb: args.analysis_time_per_gb,
        analysis_example_spelling: args.analysis_example_spelling,
        seed: args.seed,
        ..EmulatorConfig::new(credentials)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::analysis::SceneRange;

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
    fn analysis_settings_become_the_request() {
        let full = AnalysisArgs {
            analysis_person_count: Some(3),
            scene_range: Some(SceneRange::ExtraShort),
            tag_ids: vec![7, 8],
            detect_audio_effects: true,
            ..args()
        };
        let request = analysis_request(&full).unwrap();
        assert_eq!(request.person_count, 3);
        assert_eq!(request.scene_range, Some(SceneRange::ExtraShort));
        assert_eq!(request.tag_ids, vec![7, 8]);
        assert!(request.audio_effects);
        let durations = AnalysisArgs {
            min_scene_duration: Some(2),
            max_scene_duration: Some(8),
            ..args()
        };
        assert_eq!(
            analysis_request(&durations).unwrap().scene_seconds,
            Some((2, 8))
        );
    }

    #[test]
    fn bad_analysis_settings_are_refused_with_a_hint() {
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
            let err = analysis_request(&case).unwrap_err().to_string();
            assert!(err.contains("hint:"), "{err}");
        }
    }

    #[test]
    fn settings_without_analyze_are_refused() {
        let stray = AnalysisArgs {
            analyze: false,
            ..args()
        };
        let err = analysis_plan(&stray, false).unwrap_err();
        assert_eq!(crate::exit::for_error(&err), crate::exit::Exit::Usage);
        let none = AnalysisArgs {
            analysis_person_count: None,
            ..stray
        };
        assert!(analysis_plan(&none, false).unwrap().is_none());
    }
}
