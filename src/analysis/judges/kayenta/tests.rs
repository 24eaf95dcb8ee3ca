use proptest::prelude::*;

use super::*;

fn cfg95() -> KayentaConfig {
    KayentaConfig {
        confidence: 0.95,
        ..KayentaConfig::default()
    }
}

// Kayenta's own classifier test data (kayenta-judge ClassifierSuite: tolerance 0.10, 95%).
const EXP_PASS: [f64; 30] = [
    9.776_734_312_010_946,
    10.587_071_850_477_695,
    7.837_550_638_890_177,
    9.324_332_688_611_388,
    8.377_450_540_978_442,
    8.935_926_439_960_628,
    8.270_766_332_472_851,
    9.748_430_812_671_693,
    11.623_746_715_547_156,
    9.275_344_267_963_394,
    8.153_804_774_917_152,
    10.562_020_975_754_294,
    13.498_135_575_451_835,
    11.054_419_256_110_332,
    6.953_890_359_005_509,
    12.521_008_342_195_48,
    9.021_635_860_354_644,
    4.923_485_669_953_166,
    11.251_360_203_607_172,
    11.598_449_508_040_337,
    8.435_232_204_668_182,
    11.110_228_516_867_279,
    10.700_633_801_647_55,
    8.921_277_365_211_525,
    10.086_167_067_942_661,
    11.421_075_154_830_87,
    9.379_234_781_364_495,
    7.798_032_014_855_259,
    10.623_398_072_757_46,
    11.909_642_062_063_739,
];
const CONTROL_MID: [f64; 30] = [
    11.145_358_677_408_6,
    9.961_805_988_559_702,
    7.068_574_306_369_829,
    7.301_266_181_048_366,
    9.794_463_026_565_673,
    9.603_791_860_368_73,
    6.186_779_335_033_939,
    12.345_599_159_550_174,
    10.371_891_733_859_533,
    8.609_430_078_501_672,
    9.913_162_673_361_084,
    10.361_375_299_003_466,
    14.206_800_387_518_818,
    10.946_153_754_753_3,
    10.215_876_627_044_048,
    11.739_760_899_484_603,
    10.907_627_468_626_439,
    12.823_353_694_464_775,
    8.101_860_977_173_214,
    8.498_161_640_880_493,
    12.113_441_374_697_231,
    13.272_210_809_932_028,
    10.114_579_381_663_297,
    6.946_395_876_797_807,
    6.210_527_854_172_778,
    10.160_401_684_903_775,
    8.345_771_206_645_546,
    8.383_822_063_895_833,
    7.002_020_507_008_377,
    10.755_757_401_808_442,
];
const EXP_HIGH: [f64; 30] = [
    20.878_412_601_720_026,
    21.785_505_811_916_22,
    19.708_280_847_170_19,
    15.859_946_903_461_562,
    19.510_058_772_176_84,
    19.392_005_525_270_303,
    22.926_528_314_912_1,
    17.156_530_276_709_894,
    18.655_117_916_226_17,
    23.422_607_911_610_392,
    24.055_817_684_156_644,
    22.626_899_585_165_01,
    21.979_472_967_817_678,
    21.659_318_607_218_694,
    20.067_707_574_072_426,
    22.119_570_836_305_414,
    16.440_371_326_633_07,
    21.559_622_826_341_27,
    21.000_181_443_489_22,
    17.779_369_411_412_663,
    17.806_006_358_943_584,
    18.537_200_618_386_11,
    20.555_550_300_210_797,
    19.552_928_184_468_378,
    21.771_118_944_087_092,
    21.809_622_806_176_627,
    20.961_762_909_905_27,
    20.977_571_577_503_02,
    19.106_303_205_498_794,
    16.976_918_966_987_08,
];

fn kayenta_suite(direction: Direction) -> KayentaConfig {
    KayentaConfig {
        tolerance: 0.10,
        direction,
        ..cfg95()
    }
}

#[test]
fn kayenta_classifier_suite() {
    let either = kayenta_suite(Direction::Either);
    let c = |b: &[f64], x: &[f64], k: &KayentaConfig| judge(b, x, k).classification;
    assert_eq!(c(&CONTROL_MID, &EXP_PASS, &either), Classification::Pass);
    assert_eq!(c(&CONTROL_MID, &EXP_HIGH, &either), Classification::High);
    assert_eq!(c(&EXP_HIGH, &EXP_PASS, &either), Classification::Low);
    let inc = kayenta_suite(Direction::Increase);
    let dec = kayenta_suite(Direction::Decrease);
    assert_eq!(c(&EXP_HIGH, &EXP_PASS, &inc), Classification::Pass);
    assert_eq!(c(&CONTROL_MID, &EXP_HIGH, &dec), Classification::Pass);
    assert_eq!(c(&CONTROL_MID, &EXP_HIGH, &inc), Classification::High);
    assert_eq!(c(&EXP_HIGH, &EXP_PASS, &dec), Classification::Low);
    // Tied observations, identical populations, a leading zero: all Pass.
    assert_eq!(c(&[1.0, 1.0], &[1.0, 1.0, 1.0], &dec), Classification::Pass);
    let up = [1.0, 2.0, 3.0, 4.0, 5.0];
    let down = [5.0, 4.0, 3.0, 2.0, 1.0];
    assert_eq!(c(&down, &up, &dec), Classification::Pass);
    assert_eq!(
        c(&[1.0; 5], &[0.0, 1.0, 1.0, 1.0, 1.0], &dec),
        Classification::Pass
    );
    assert_eq!(c(&up, &[], &dec), Classification::Nodata);
}

#[test]
fn statistics_md_vector() {
    // statistics.md §4: canary [10, 20, 30, 40], baseline [1, 2, 3, 4], 95%.
    let r = judge(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 30.0, 40.0], &cfg95());
    assert_eq!(r.ci, (6.0, 39.0));
    assert!((r.estimate - 22.5).abs() < 1e-4, "{r:?}");
    assert_eq!(r.classification, Classification::High);
    assert_eq!(r.ratio, Some(10.0));
    assert_eq!(r.effect_size, Some(10.0));
    assert!(!r.critical);
    // The effect-size gate can hold it back.
    let gated = KayentaConfig {
        allowed_increase: Some(20.0),
        ..cfg95()
    };
    let g = judge(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 30.0, 40.0], &gated);
    assert_eq!(g.classification, Classification::Pass);
    // CLES is 1 here: every canary value is above every baseline value.
    let cles = KayentaConfig {
        effect_size: EffectSizeKind::Cles,
        allowed_increase: Some(0.9),
        ..cfg95()
    };
    let r = judge(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 30.0, 40.0], &cles);
    assert_eq!(
        (r.classification, r.effect_size),
        (Classification::High, Some(1.0))
    );
}

#[test]
fn inverted_interval_is_high_like_kayenta() {
    // Heavy ties: R's root finding returns lower > upper; Kayenta's rule then says High.
    let mut canary = vec![1.0; 25];
    canary.push(2.0);
    let mut baseline = vec![0.0; 21];
    baseline.extend([1.0; 9]);
    baseline.push(2.0);
    let r = judge(&baseline, &canary, &cfg95());
    assert!(r.ci.0 > r.ci.1, "{r:?}");
    assert_eq!(r.classification, Classification::High, "{r:?}");
}

#[test]
fn missing_data_rules() {
    let some = [1.0, 2.0, 3.0];
    let nan = [f64::NAN, f64::NAN];
    let base = KayentaConfig::default();
    let r = judge(&some, &nan, &base);
    assert_eq!(
        (r.classification, r.critical),
        (Classification::Nodata, false)
    );
    let must = KayentaConfig {
        must_have_data: true,
        ..base.clone()
    };
    assert_eq!(
        judge(&some, &[], &must).classification,
        Classification::NodataFailMetric
    );
    let critical = KayentaConfig {
        must_have_data: true,
        critical: true,
        ..base.clone()
    };
    let r = judge(&[], &some, &critical);
    assert_eq!(
        (r.classification, r.critical),
        (Classification::Nodata, true)
    );
    let replace = KayentaConfig {
        nan_strategy: NanStrategy::Replace,
        ..base.clone()
    };
    assert_eq!(
        judge(&some, &[], &replace).classification,
        Classification::Pass
    );
    // Replace turns NaN into zeros, which are data.
    let r = judge(&[0.0, 0.0, 0.0], &nan, &replace);
    assert_eq!((r.classification, r.canary_n), (Classification::Pass, 2));
    // Infinite values cannot be judged.
    let r = judge(&some, &[1.0, f64::INFINITY], &critical);
    assert_eq!(
        (r.classification, r.critical),
        (Classification::Nodata, true)
    );
}

#[test]
fn constant_arms_are_decided_by_the_sign_of_the_difference() {
    let r = judge(&[3.0; 4], &[5.0; 6], &KayentaConfig::default());
    assert_eq!(r.classification, Classification::High);
    assert_eq!((r.estimate, r.ci), (2.0, (2.0, 2.0)));
    let r = judge(&[5.0; 4], &[3.0; 6], &KayentaConfig::default());
    assert_eq!(r.classification, Classification::Low);
    let inc = KayentaConfig {
        direction: Direction::Increase,
        ..KayentaConfig::default()
    };
    assert_eq!(
        judge(&[5.0; 4], &[3.0; 6], &inc).classification,
        Classification::Pass
    );
    // Ratio 5/3 < allowed 2: gated to Pass.
    let gated = KayentaConfig {
        allowed_increase: Some(2.0),
        ..KayentaConfig::default()
    };
    assert_eq!(
        judge(&[3.0; 4], &[5.0; 6], &gated).classification,
        Classification::Pass
    );
    // One value overall.
    let r = judge(&[3.0; 4], &[3.0; 6], &KayentaConfig::default());
    assert_eq!((r.classification, r.estimate), (Classification::Pass, 0.0));
}

#[test]
fn critical_thresholds() {
    let critical = KayentaConfig {
        critical: true,
        ..cfg95()
    };
    let base = [1.0, 2.0, 3.0, 4.0];
    let canary = [10.0, 20.0, 30.0, 40.0];
    let r = judge(&base, &canary, &critical);
    assert_eq!((r.classification, r.critical), (Classification::High, true));
    let lenient = KayentaConfig {
        critical_increase: Some(20.0),
        ..critical.clone()
    };
    let r = judge(&base, &canary, &lenient);
    assert_eq!(
        (r.classification, r.critical),
        (Classification::High, false)
    );
    // A zero baseline mean makes the ratio NaN, which does not block the critical gate.
    let r = judge(&[0.0, 0.0, 0.0, 0.0], &canary, &lenient);
    assert_eq!(
        (r.classification, r.critical, r.ratio),
        (Classification::High, true, None)
    );
}

#[test]
fn outliers_are_removed_per_arm() {
    let mut base: Vec<f64> = (0..40).map(|i| 10.0 + f64::from(i % 5)).collect();
    let mut canary = base.clone();
    canary.push(1e6);
    base.push(10.0);
    let keep = judge(&base, &canary, &KayentaConfig::default());
    let drop = judge(
        &base,
        &canary,
        &KayentaConfig {
            remove_outliers: true,
            ..KayentaConfig::default()
        },
    );
    assert_eq!((keep.canary_n, drop.canary_n), (41, 40));
    assert_eq!(drop.classification, Classification::Pass);
    // R type 7 percentiles.
    assert_eq!(percentile_r7(&[1.0, 2.0, 3.0, 4.0], 0.25), 1.75);
    assert_eq!(percentile_r7(&[1.0, 2.0, 3.0, 4.0], 1.0), 4.0);
    assert!(percentile_r7(&[], 0.5).is_nan());
}

#[test]
fn invalid_configuration_is_reported_not_panicked() {
    let bad = KayentaConfig {
        confidence: 1.5,
        ..KayentaConfig::default()
    };
    let r = judge(&[1.0], &[2.0], &bad);
    assert_eq!(r.classification, Classification::Nodata);
    assert!(r.reason.contains("confidence"), "{}", r.reason);
}

fn metric(name: &str, group: &str, c: Classification) -> ScoredMetric {
    ScoredMetric {
        name: name.to_string(),
        group: group.to_string(),
        classification: c,
        critical: false,
        muted: false,
    }
}

#[test]
fn scorer_groups_weights_and_thresholds() {
    use Classification::{High, Nodata, NodataFailMetric, Pass};
    let ms = vec![
        metric("a", "latency", Pass),
        metric("b", "latency", High),
        metric("c", "latency", Pass),
        metric("d", "errors", Pass),
        metric("e", "errors", NodataFailMetric),
        metric("f", "saturation", Nodata),
    ];
    let mut cfg = ScoreConfig::default();
    cfg.group_weights.insert("latency".to_string(), 60.0);
    let s = score(&ms, &cfg);
    // latency 66.67 at 60%; errors 50 and saturation (no counted metric) 100 share 40%.
    assert!((s.groups["latency"] - 200.0 / 3.0).abs() < 1e-12);
    assert_eq!(s.groups["errors"], 50.0);
    assert_eq!(s.groups["saturation"], 100.0);
    assert_eq!(s.score, 70.0);
    assert_eq!(s.outcome, ScoreOutcome::Fail);
    let lenient = ScoreConfig {
        pass: 90.0,
        marginal: 70.0,
        ..cfg.clone()
    };
    assert_eq!(score(&ms, &lenient).outcome, ScoreOutcome::Marginal);
    // Muting the High metric lifts latency to 100.
    let mut muted = ms.clone();
    muted[1].muted = true;
    assert_eq!(score(&muted, &cfg).score, 90.0);
}

#[test]
fn scorer_nodata_and_critical() {
    use Classification::{High, Nodata, Pass};
    let ms = vec![
        metric("a", "g", Nodata),
        metric("b", "g", Nodata),
        metric("c", "g", Pass),
        metric("d", "h", Pass),
    ];
    let s = score(&ms, &ScoreConfig::default());
    assert_eq!((s.score, s.outcome), (0.0, ScoreOutcome::Fail));
    let mut crit = vec![metric("a", "g", Pass), metric("b", "g", High)];
    crit[1].critical = true;
    let s = score(&crit, &ScoreConfig::default());
    assert!(s.critical_failure && s.score == 0.0 && s.outcome == ScoreOutcome::Fail);
    crit[1].muted = true;
    let s = score(&crit, &ScoreConfig::default());
    assert!(!s.critical_failure && s.score == 100.0 && s.outcome == ScoreOutcome::Pass);
    let empty = score(&[], &ScoreConfig::default());
    assert_eq!((empty.score, empty.outcome), (0.0, ScoreOutcome::Fail));
}

#[test]
fn half_up_rounding_on_the_decimal_value() {
    assert_eq!(round_half_up_2(83.335), 83.34);
    assert_eq!(round_half_up_2(66.666_666_666), 66.67);
    assert_eq!(round_half_up_2(1.005), 1.01);
    assert_eq!(round_half_up_2(1.004_999), 1.0);
    assert_eq!(round_half_up_2(-2.345), -2.35);
    assert_eq!(round_half_up_2(100.0), 100.0);
    assert!(round_half_up_2(f64::NAN).is_nan());
}

fn any_value() -> impl Strategy<Value = f64> {
    prop_oneof![
        8 => -1e3f64..1e3,
        2 => (0i32..5).prop_map(f64::from),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(0.0),
    ]
}

fn any_config() -> impl Strategy<Value = KayentaConfig> {
    (
        0.5f64..0.999,
        0.0f64..1.0,
        prop_oneof![
            Just(Direction::Either),
            Just(Direction::Increase),
            Just(Direction::Decrease)
        ],
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(confidence, tolerance, direction, cles, critical, must, replace, outl)| {
                KayentaConfig {
                    confidence,
                    tolerance,
                    direction,
                    effect_size: if cles {
                        EffectSizeKind::Cles
                    } else {
                        EffectSizeKind::MeanRatio
                    },
                    critical,
                    must_have_data: must,
                    nan_strategy: if replace {
                        NanStrategy::Replace
                    } else {
                        NanStrategy::Remove
                    },
                    remove_outliers: outl,
                    ..KayentaConfig::default()
                }
            },
        )
}

fn any_classification() -> impl Strategy<Value = Classification> {
    prop_oneof![
        Just(Classification::Pass),
        Just(Classification::High),
        Just(Classification::Low),
        Just(Classification::Nodata),
        Just(Classification::NodataFailMetric),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn never_panics(
        b in prop::collection::vec(any_value(), 0..40),
        c in prop::collection::vec(any_value(), 0..40),
        cfg in any_config(),
    ) {
        let r = judge(&b, &c, &cfg);
        prop_assert!(!r.reason.is_empty());
    }

    #[test]
    fn identical_arms_never_fail(
        v in prop::collection::vec(-1e3f64..1e3, 1..60),
        cfg in any_config(),
    ) {
        let mut shuffled = v.clone();
        shuffled.reverse();
        let r = judge(&v, &shuffled, &cfg);
        prop_assert_eq!(r.classification, Classification::Pass);
        let card = score(
            &[ScoredMetric { name: "m".into(), group: "g".into(), classification: r.classification,
                critical: r.critical, muted: false }],
            &ScoreConfig::default(),
        );
        prop_assert_eq!(card.outcome, ScoreOutcome::Pass);
    }

    #[test]
    fn empty_or_all_nan_is_nodata(
        v in prop::collection::vec(-1e3f64..1e3, 1..20),
        nans in 0usize..5,
        canary_empty in any::<bool>(),
    ) {
        let missing = vec![f64::NAN; nans];
        let cfg = KayentaConfig::default();
        let r = if canary_empty { judge(&v, &missing, &cfg) } else { judge(&missing, &v, &cfg) };
        prop_assert_eq!(r.classification, Classification::Nodata);
    }

    #[test]
    fn verdict_is_invariant_to_scaling(
        b in prop::collection::vec(0.0f64..100.0, 2..40),
        c in prop::collection::vec(0.0f64..100.0, 2..40),
        shift in -30.0f64..30.0,
        exp in -3i32..10,
        cles in any::<bool>(),
    ) {
        // Powers of two scale exactly, so ranks, ratios and CLES are unchanged; only R's
        // absolute root tolerance (1e-4) does not scale, so skip verdicts within reach of it.
        let c: Vec<f64> = c.iter().map(|x| x + shift).collect();
        let k = 2f64.powi(exp);
        let cfg = KayentaConfig {
            effect_size: if cles { EffectSizeKind::Cles } else { EffectSizeKind::MeanRatio },
            ..KayentaConfig::default()
        };
        let r1 = judge(&b, &c, &cfg);
        let scale = |v: &[f64]| v.iter().map(|x| x * k).collect::<Vec<_>>();
        let r2 = judge(&scale(&b), &scale(&c), &cfg);
        let bound = cfg.tolerance * r1.estimate.abs();
        let margin = (r1.ci.0 - bound).abs().min((r1.ci.1 + bound).abs());
        prop_assume!(margin > 2e-3 * (1.0 + 1.0 / k));
        prop_assert_eq!(r1.effect_size.map(f64::to_bits), r2.effect_size.map(f64::to_bits));
        prop_assert_eq!(r1.classification, r2.classification);
    }

    #[test]
    fn scorer_never_panics(
        ms in prop::collection::vec(
            (any_classification(), any::<bool>(), any::<bool>(), 0usize..4), 0..30),
        w in prop::collection::vec(prop_oneof![-50.0f64..150.0, Just(f64::NAN)], 0..4),
    ) {
        let metrics: Vec<ScoredMetric> = ms
            .iter()
            .enumerate()
            .map(|(i, &(classification, critical, muted, g))| ScoredMetric {
                name: format!("m{i}"),
                group: format!("g{g}"),
                classification,
                critical,
                muted,
            })
            .collect();
        let cfg = ScoreConfig {
            group_weights: w.iter().enumerate().map(|(i, &x)| (format!("g{i}"), x)).collect(),
            ..ScoreConfig::default()
        };
        let s = score(&metrics, &cfg);
        if s.critical_failure {
            prop_assert_eq!(s.outcome, ScoreOutcome::Fail);
        }
    }
}
