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
