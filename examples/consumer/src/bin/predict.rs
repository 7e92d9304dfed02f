//! Fills the holes of a photo with the bundled model: `predict PHOTO MASK OUT.png`, where the
//! mask is white where the photo should be filled.

use partialconv::{io, tch::Device, Inpainter, Strategy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [photo, mask, out] = args.as_slice() else {
        return Err("usage: predict PHOTO MASK OUT.png".into());
    };

    // `None`: the model compiled into partialconv (its default `bundled-model` feature),
    // its convolutions in bf16 on a CPU that has it (about twice as fast, the same quality)
    // or fp16 on CUDA; `Inpainter::load_with` takes another `Precision`.
    let inpainter = Inpainter::load(None, Device::cuda_if_available())?;
    let image = io::read_image(photo.as_ref())?;
    let holes = io::read_mask(mask.as_ref())?;
    let filled = inpainter.predict(&image, &holes, Strategy::Auto)?;
    io::write_image(&filled, out.as_ref())?;
    Ok(())
}
