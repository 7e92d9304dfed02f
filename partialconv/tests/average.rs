//! Weight averaging: the element-wise mean of every variable, batch-norm statistics included,
//! and a clear error for models that cannot be averaged.

use partialconv::average::{average, average_files};
use partialconv::{Model, ModelMeta, PConvUNetConfig, Storage};
use tch::{Device, Tensor};

fn tiny(width: i64) -> Model {
    let config = PConvUNetConfig {
        layer_size: 4,
        width,
        ..Default::default()
    };
    Model::new(ModelMeta::new(config), Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn the_average_is_the_element_wise_mean_of_every_variable() {
    tch::manual_seed(7);
    let models = [tiny(8), tiny(8), tiny(8)];
    // Fresh running statistics are the same in every model; make them differ so that the
    // test covers them too.
    tch::no_grad(|| {
        for (name, mut t) in models[1].vs.variables() {
            if name.contains("running") {
                t.copy_(&(t.rand_like() + 0.5));
            }
        }
    });
    let avg = average(&models).unwrap();
    let members: Vec<_> = models.iter().map(|m| m.vs.variables()).collect();
    let mut running = 0;
    for (name, got) in avg.vs.variables() {
        let want = (&members[0][&name] + &members[1][&name] + &members[2][&name]) / 3.0;
        assert!(max_diff(&got, &want) < 1e-6, "{name}");
        running += usize::from(name.contains("running"));
    }
    assert!(running > 0, "no batch-norm statistics among the variables");
    assert_eq!(avg.meta.config, models[0].meta.config);
    assert_eq!(avg.meta.training["average_of"].as_array().unwrap().len(), 3);
}

#[test]
fn a_model_averaged_with_itself_fills_as_before() {
    tch::manual_seed(3);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    tiny(8).save(&path, Storage::F32).unwrap();
    let avg = average_files(&[path.clone(), path.clone()], Device::Cpu).unwrap();
    let model = Model::load(&path, Device::Cpu).unwrap();
    let img = image::RgbImage::from_fn(48, 40, |x, y| image::Rgb([x as u8 * 5, y as u8 * 6, 90]));
    let holes = (0..48 * 40).map(|i| (10..26).contains(&(i % 48)) && (8..20).contains(&(i / 48)));
    let mask = partialconv::HoleMask::from_bools(48, 40, holes.collect());
    let want = model.fill_native(&[&img], &[&mask]).unwrap();
    let got = avg.fill_native(&[&img], &[&mask]).unwrap();
    assert_eq!(got[0], want[0]);
}

#[test]
fn models_of_other_architectures_are_a_clear_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (narrow, wide) = (
        dir.path().join("w4.safetensors"),
        dir.path().join("w8.safetensors"),
    );
    tiny(4).save(&narrow, Storage::F32).unwrap();
    tiny(8).save(&wide, Storage::F32).unwrap();
    let err = average_files(&[narrow, wide], Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("w8.safetensors") && err.contains("another architecture"),
        "{err}"
    );
    assert!(average(&[]).is_err());
}

/// Every batch norm's running statistics, by variable name.
fn bn_statistics(m: &Model) -> Vec<(String, Tensor)> {
    let mut stats: Vec<_> =
        m.vs.variables()
            .into_iter()
            .filter(|(name, _)| name.contains("running_"))
            // Copies: the variables themselves change with the next recalibration.
            .map(|(name, t)| (name, t.copy()))
            .collect();
    stats.sort_by(|a, b| a.0.cmp(&b.0));
    stats
}

/// Random photos-to-be with about a third of each image holed, as training feeds them.
/// Two noise images with random holes, from `seed` alone. Not from torch's global generator:
/// the other tests of this binary draw from it at the same time, and a draw between
/// `manual_seed` and `randn` once gave this test two different "batch 1"s.
fn holed_batch(seed: u64) -> (Tensor, partialconv::Mask) {
    // xorshift64*, uniform in [0, 1).
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    };
    // Box-Muller: standard normal values, as `randn` gave.
    let x: Vec<f32> = (0..2 * 3 * 64 * 64)
        .map(|_| {
            let (u, v) = (uniform().max(1e-12), uniform());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        })
        .collect();
    let valid: Vec<f32> = (0..2 * 64 * 64)
        .map(|_| if uniform() > 0.3 { 1.0 } else { 0.0 })
        .collect();
    let x = Tensor::from_slice(&x).reshape([2, 3, 64, 64]);
    let valid = Tensor::from_slice(&valid).reshape([2, 1, 64, 64]);
    (&x * &valid, partialconv::Mask::shared(valid, 3))
}

#[test]
fn recalibrated_bn_statistics_are_the_mean_over_the_batches_whatever_they_were() {
    let mut m = tiny(8);
    tch::no_grad(|| {
        for (name, mut v) in m.vs.variables() {
            if name.contains("running_mean") {
                let _ = v.fill_(5.0);
            } else if name.contains("running_var") {
                let _ = v.fill_(9.0);
            }
        }
    });
    let (x, mask) = holed_batch(1);
    let train_mode = tch::no_grad(|| m.net.forward_t(&x, &mask, true).0);
    let eval_mode = |m: &Model| tch::no_grad(|| m.net.forward_t(&x, &mask, false).0);
    let relative = |a: &Tensor| max_diff(a, &train_mode) / train_mode.abs().max().double_value(&[]);
    let before = relative(&eval_mode(&m));
    assert!(before > 0.1, "the garbage statistics should show: {before}");

    m.net.freeze_enc_bn = true;
    assert_eq!(m.net.recalibrate_bn([holed_batch(1)]), 1);
    assert!(m.net.freeze_enc_bn, "the stage-2 flag is restored");
    let one = bn_statistics(&m);
    // One batch's statistics make inference normalise that batch as training does (up to
    // the running variance's n/(n − 1), which the 4² bottleneck of two images makes 3 %).
    let after = relative(&eval_mode(&m));
    assert!(after < 0.05, "{after}");

    m.net.recalibrate_bn([holed_batch(2)]);
    let two = bn_statistics(&m);
    m.net.recalibrate_bn([holed_batch(1), holed_batch(2)]);
    let both = bn_statistics(&m);
    let scale = |t: &Tensor| t.abs().max().double_value(&[]);
    for (((name, a), (_, b)), (_, ab)) in one.iter().zip(&two).zip(&both) {
        // Relative: with random weights some channels' means are ~1e-5.
        assert!(
            max_diff(a, b) > 1e-3 * scale(a),
            "{name}: both batches gave the same statistics"
        );
        let mean = (a + b) / 2.0;
        assert!(
            max_diff(ab, &mean) <= 1e-4 * scale(&mean) + 1e-8,
            "{name}: not the mean over the batches"
        );
    }
}
