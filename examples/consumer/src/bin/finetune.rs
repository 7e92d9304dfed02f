//! Fine-tunes the bundled model on a folder of photos of one domain:
//! `finetune PHOTOS OUT.safetensors STEPS`. `predict` does not take a model path, but
//! `Inpainter::load(Some(path), ..)` loads the result.

use std::ops::ControlFlow;

use partialconv::{tch::Device, FineTuner, ModelSource, TrainConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [photos, out, steps] = args.as_slice() else {
        return Err("usage: finetune PHOTOS OUT.safetensors STEPS".into());
    };

    let mut cfg = TrainConfig::new(photos, out); // every 7th photo is held out to validate
    cfg.base = Some(ModelSource::Bundled);
    cfg.steps = steps.parse()?;
    cfg.stage2_at = 0; // a fine-tune runs in the paper's second stage: encoder BN frozen
    cfg.batch_size = 2;
    cfg.train_size = 256;
    cfg.val_size = 256;
    cfg.device = Device::cuda_if_available();

    let mut tuner = FineTuner::new(cfg)?;
    let summary = tuner.run(|p| {
        eprintln!("step {}/{}: loss {:.4}", p.step, p.total, p.loss);
        ControlFlow::Continue(()) // Break stops the run after saving a checkpoint
    })?;
    match summary.last_val {
        Some(val) if summary.val_images > 0 => {
            eprintln!("held-out PSNR {:.2} dB", val.mean_psnr())
        }
        _ => eprintln!("no photo was held out to validate on"),
    }
    eprintln!("wrote {out} after {} steps", summary.steps);
    Ok(())
}
