//! Properties of prediction that hold for any weights: pixels outside the hole are returned
//! bit for bit, any size round-trips, and `crop` equals `original` when one crop covers the
//! whole image.

use std::sync::OnceLock;

use image::{DynamicImage, Rgb, RgbImage};
use partialconv::masks::HoleMask;
use partialconv::{Inpainter, Model, ModelMeta, PConvUNetConfig, Strategy as Fill};
use proptest::prelude::*;
use tch::Device;

fn inpainter() -> &'static Inpainter {
    static I: OnceLock<Inpainter> = OnceLock::new();
    I.get_or_init(|| {
        tch::manual_seed(3);
        let config = PConvUNetConfig {
            layer_size: 4,
            width: 4,
            ..Default::default()
        };
        Inpainter::new(Model::new(ModelMeta::new(config), Device::Cpu).unwrap())
    })
}

fn image_from(w: u32, h: u32, seed: u64) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let v = (x as u64 * 7919 + y as u64 * 104_729).wrapping_add(seed.wrapping_mul(31)) % 251;
        Rgb([v as u8, (v * 3 % 256) as u8, (255 - v) as u8])
    })
}

fn rect_mask(w: u32, h: u32, (x0, y0, x1, y1): (u32, u32, u32, u32)) -> HoleMask {
    let holes = (0..h)
        .flat_map(|y| (0..w).map(move |x| x >= x0 && x < x1 && y >= y0 && y < y1))
        .collect();
    HoleMask::from_bools(w, h, holes)
}

fn arb_case() -> impl Strategy<Value = (u32, u32, (u32, u32, u32, u32), u64)> {
    (1u32..70, 1u32..70, any::<u64>()).prop_flat_map(|(w, h, seed)| {
        (
            Just(w),
            Just(h),
            (0..w, 0..h)
                .prop_flat_map(move |(x0, y0)| (Just(x0), Just(y0), x0 + 1..=w, y0 + 1..=h)),
            Just(seed),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn outside_hole_pixels_unchanged_and_sizes_round_trip((w, h, rect, seed) in arb_case(), strategy in prop_oneof![
        Just(Fill::Original), Just(Fill::Crop), Just(Fill::Auto), Just(Fill::Resize { long_side: 32 })
    ]) {
        let img = image_from(w, h, seed);
        let mask = rect_mask(w, h, rect);
        let out = inpainter().predict(&DynamicImage::ImageRgb8(img.clone()), &mask, strategy).unwrap().to_rgb8();
        prop_assert_eq!(out.dimensions(), (w, h));
        for (x, y, p) in out.enumerate_pixels() {
            if !mask.get(x, y) {
                prop_assert_eq!(p, img.get_pixel(x, y));
            }
        }
    }

    #[test]
    fn crop_equals_original_when_one_crop_covers_everything(w in 8u32..60, h in 8u32..60, seed in any::<u64>()) {
        // A hole in the middle: its context margin (at least 32 pixels) reaches every edge of
        // an image under 64 pixels wide.
        let mask = rect_mask(w, h, (w / 2 - 2, h / 2 - 2, w / 2 + 2, h / 2 + 2));
        let regions = partialconv::inpainter::crop_regions(w, h, &mask.component_boxes());
        prop_assert_eq!(regions.len(), 1);
        prop_assert_eq!((regions[0].width(), regions[0].height()), (w, h));
        let img = DynamicImage::ImageRgb8(image_from(w, h, seed));
        let a = inpainter().predict(&img, &mask, Fill::Crop).unwrap();
        let b = inpainter().predict(&img, &mask, Fill::Original).unwrap();
        prop_assert_eq!(a.to_rgb8(), b.to_rgb8());
    }
}

#[test]
fn batch_matches_single_predictions() {
    let items: Vec<(DynamicImage, HoleMask)> = (0..3)
        .map(|i| {
            (
                DynamicImage::ImageRgb8(image_from(33, 21, i)),
                rect_mask(33, 21, (3 + i as u32, 4, 12, 15)),
            )
        })
        .collect();
    let batch = inpainter().predict_batch(&items, Fill::Original).unwrap();
    for ((img, mask), b) in items.iter().zip(&batch) {
        let single = inpainter().predict(img, mask, Fill::Original).unwrap();
        let (s, b) = (single.to_rgb8(), b.to_rgb8());
        let max = s
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| x.abs_diff(*y))
            .max()
            .unwrap();
        assert!(max <= 1, "batched result differs by {max} levels");
    }
}

fn tiny_model() -> Model {
    let config = PConvUNetConfig {
        layer_size: 4,
        width: 4,
        ..Default::default()
    };
    Model::new(ModelMeta::new(config), Device::Cpu).unwrap()
}

fn mirrored(img: &RgbImage) -> RgbImage {
    image::imageops::flip_horizontal(img)
}

fn upside_down(img: &RgbImage) -> RgbImage {
    image::imageops::flip_vertical(img)
}

type Flip = fn(&RgbImage) -> RgbImage;

#[test]
fn each_self_ensemble_is_equivariant_to_exactly_its_own_flips() {
    use partialconv::SelfEnsemble;
    // Neither size is a multiple of the network's 16, so a single pass pads on the right and
    // bottom only and sees a flipped photo differently; an ensemble averages the views.
    let (w, h) = (37, 22);
    let img = image_from(w, h, 5);
    let holes: Vec<bool> = (0..w * h)
        .map(|p| (p % w) < 15 && (p / w) % 7 < 4)
        .collect();
    let mask = HoleMask::from_bools(w, h, holes);
    let flip_mask = |f: Flip| {
        let gray = RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([if mask.get(x, y) { 255 } else { 0 }; 3])
        });
        let flipped = f(&gray);
        HoleMask::from_bools(w, h, flipped.pixels().map(|p| p[0] > 0).collect())
    };
    let model = tiny_model();
    let max_diff = |a: &RgbImage, b: &RgbImage| {
        a.as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| x.abs_diff(*y))
            .max()
            .unwrap()
    };
    let flips: [(&str, Flip); 2] = [("left-right", mirrored), ("up-down", upside_down)];
    for (ensemble, equivariant_to) in [
        (SelfEnsemble::Single, [false, false]),
        (SelfEnsemble::Mirror, [true, false]),
        (SelfEnsemble::Flips, [true, true]),
    ] {
        let a = model
            .fill_native_with(&[&img], &[&mask], ensemble)
            .unwrap()
            .remove(0);
        for ((name, flip), equivariant) in flips.iter().zip(equivariant_to) {
            let b = model
                .fill_native_with(&[&flip(&img)], &[&flip_mask(*flip)], ensemble)
                .unwrap()
                .remove(0);
            let diff = max_diff(&flip(&a), &b);
            assert_eq!(
                diff <= 1,
                equivariant,
                "{ensemble} under the {name} flip: differs by {diff}"
            );
        }
    }
}

#[test]
fn the_telea_blend_owns_the_edge_and_paste_is_the_raw_fill() {
    use partialconv::Blend;
    let (w, h) = (48, 40);
    let img = image_from(w, h, 8);
    let mask = rect_mask(w, h, (10, 8, 38, 30));
    let input = DynamicImage::ImageRgb8(img.clone());

    let raw = inpainter()
        .fill_native(&[&img], &[&mask])
        .unwrap()
        .remove(0);
    let pasted = partialconv::inpainter::composite(&img, &raw, &mask);
    let telea = partialconv::telea::inpaint_telea(&img, &mask.to_gray(), 4.0);
    let blended = inpainter()
        .predict(&input, &mask, Fill::Original)
        .unwrap()
        .to_rgb8();
    assert_eq!(inpainter().blend(), Blend::Telea);
    assert_eq!(blended, inpainter().merge(&img, &raw, &mask));
    // The hole's first column is Telea's; its centre, 10 px from any edge, the network's.
    assert_eq!(blended.get_pixel(10, 20), telea.get_pixel(10, 20));
    assert_eq!(blended.get_pixel(24, 19), pasted.get_pixel(24, 19));
    assert_ne!(blended, pasted);

    let paste = Inpainter::new(tiny_model()).with_blend(Blend::Paste);
    let raw = paste.fill_native(&[&img], &[&mask]).unwrap().remove(0);
    assert_eq!(
        paste
            .predict(&input, &mask, Fill::Original)
            .unwrap()
            .to_rgb8(),
        partialconv::inpainter::composite(&img, &raw, &mask)
    );
}

#[test]
fn auto_is_a_pure_function_of_size_holes_and_model() {
    use partialconv::inpainter::choose;
    use partialconv::masks::Rect;
    let small_hole = [Rect {
        x0: 1000,
        y0: 1000,
        x1: 1400,
        y1: 1400,
    }];
    assert_eq!(choose(4000, 3000, &small_hole, 512), Fill::Crop);
    let big_hole = [Rect {
        x0: 0,
        y0: 0,
        x1: 3000,
        y1: 2500,
    }];
    assert_eq!(
        choose(4000, 3000, &big_hole, 512),
        Fill::Resize { long_side: 512 }
    );
    assert_eq!(
        choose(
            500,
            400,
            &[Rect {
                x0: 0,
                y0: 0,
                x1: 400,
                y1: 300
            }],
            512
        ),
        Fill::Original
    );
    assert_eq!(
        choose(4000, 3000, &small_hole, 512),
        choose(4000, 3000, &small_hole, 512)
    );
}

#[test]
fn arrays_predict_exactly_what_images_do() {
    use partialconv::ndarray::{s, Array2, Array3};
    let (w, h) = (29u32, 17u32);
    let img = image_from(w, h, 5);
    let mask = rect_mask(w, h, (4, 3, 15, 11));
    let want = inpainter()
        .predict(&DynamicImage::ImageRgb8(img.clone()), &mask, Fill::Auto)
        .unwrap()
        .to_rgb8();
    let pixels = Array3::from_shape_vec((h as usize, w as usize, 3), img.into_raw()).unwrap();
    let holes = Array2::from_shape_fn((h as usize, w as usize), |(y, x)| {
        mask.get(x as u32, y as u32)
    });
    let got = inpainter()
        .predict_array(pixels.view(), holes.view(), Fill::Auto)
        .unwrap();
    assert_eq!(got.dim(), (h as usize, w as usize, 3));
    assert_eq!(got.as_slice().unwrap(), want.as_raw().as_slice());
    // The file convention (white = fill) as u8, and a strided view of a larger array.
    let luma = holes.mapv(|hole| if hole { 255u8 } else { 0 });
    let mut big = Array3::<u8>::zeros((h as usize, 2 * w as usize, 3));
    big.slice_mut(s![.., ..;2, ..]).assign(&pixels);
    let got = inpainter()
        .predict_array(big.slice(s![.., ..;2, ..]), luma.view(), Fill::Auto)
        .unwrap();
    assert_eq!(got.as_slice().unwrap(), want.as_raw().as_slice());
    // A mask of another size is named, as for images.
    let e = inpainter()
        .predict_array(
            pixels.view(),
            Array2::<bool>::default((3, 3)).view(),
            Fill::Auto,
        )
        .unwrap_err();
    assert!(e.to_string().contains("mask"), "{e}");
}

/// bf16 changes the fill, never the photo around it, and is set once, before sharing.
#[test]
fn bf16_inference_keeps_the_photo_and_is_set_before_sharing() {
    use partialconv::Precision::Fp32;
    // The shipped model: a random tiny network's fill rounds to the same bytes either way.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/default.safetensors");
    let load = || Inpainter::load_with(Some(path.as_ref()), Device::Cpu, Fp32).unwrap();
    let fp32 = load().with_blend(partialconv::Blend::Paste);
    let bf16 = load()
        .with_blend(partialconv::Blend::Paste)
        .with_precision(partialconv::Precision::Bf16)
        .unwrap();
    assert_eq!(bf16.precision(), partialconv::Precision::Bf16);
    let img = DynamicImage::ImageRgb8(image_from(96, 64, 1));
    let mask = rect_mask(96, 64, (30, 16, 66, 48));
    let a = fp32.predict(&img, &mask, Fill::Original).unwrap().to_rgb8();
    let b = bf16.predict(&img, &mask, Fill::Original).unwrap().to_rgb8();
    let (mut differ, mut worst, mut total, mut n) = (0, 0i32, 0i64, 0i64);
    for (x, y, pa) in a.enumerate_pixels() {
        let pb = b.get_pixel(x, y);
        if !mask.get(x, y) {
            assert_eq!(pa, pb, "({x}, {y}) is outside the hole");
            continue;
        }
        for c in 0..3 {
            let d = (pa[c] as i32 - pb[c] as i32).abs();
            differ += (d > 0) as usize;
            worst = worst.max(d);
            total += d as i64;
            n += 1;
        }
    }
    assert!(differ > 0, "bf16 computed the same bytes as fp32");
    let mean = total as f64 / n as f64;
    assert!(
        worst <= 16 && mean < 1.5,
        "bf16 fill off by {mean:.2} levels on average, {worst} at most"
    );

    let shared = load();
    let _clone = shared.clone();
    assert!(shared.with_precision(partialconv::Precision::Bf16).is_err());
    let once = load().with_precision(partialconv::Precision::Bf16).unwrap();
    assert!(once.with_precision(partialconv::Precision::Fp16).is_err());
}
