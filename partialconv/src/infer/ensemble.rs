//! Self-ensembles: the network fills flipped copies of the image, each fill is flipped back,
//! and the fills are averaged (the "geometric self-ensemble" of Lim et al.'s EDSR+, 2017).
//! The views' errors are partly independent, so their mean is closer to the photo than any
//! one of them, at one forward pass per view.
//!
//! Training flips crops horizontally only, so the mirrored view is as good a guess as the
//! plain one, while an upside-down photo is one the network never saw: its fill alone is
//! worse, yet the four-view mean still beats the two-view one (model card). Transposed views
//! (the other half of the dihedral group) lowered the score and are not offered.
//!
//! [`SelfEnsemble::Flips`] is the default: it is what lifts the bundled model past the
//! quality bar (Telea + 1.0 dB, model card), and a photo is inpainted once, by a person who
//! waits for it, so four passes (2.4× a CPU predict, a few milliseconds more on a GPU) buy
//! the better fill. Throughput-bound callers pick [`SelfEnsemble::Single`].

use std::str::FromStr;

use crate::error::{Error, Result};

/// Which flipped views of the image the network fills; their fills are averaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SelfEnsemble {
    /// One pass on the image as it is.
    Single,
    /// The image and its mirror image (left–right): two passes.
    Mirror,
    /// The image flipped left–right, upside down and both: four passes.
    #[default]
    Flips,
}

impl SelfEnsemble {
    /// Every ensemble, cheapest first, for sweeps and for listing the choices.
    pub const ALL: [SelfEnsemble; 3] = [
        SelfEnsemble::Single,
        SelfEnsemble::Mirror,
        SelfEnsemble::Flips,
    ];

    /// The name the CLI and Python take.
    pub fn name(self) -> &'static str {
        match self {
            SelfEnsemble::Single => "single",
            SelfEnsemble::Mirror => "mirror",
            SelfEnsemble::Flips => "flips",
        }
    }

    /// The views as the tensor dimensions to flip (`N×C×H×W`: 2 is up–down, 3 left–right).
    pub fn views(self) -> &'static [&'static [i64]] {
        match self {
            SelfEnsemble::Single => &[&[]],
            SelfEnsemble::Mirror => &[&[], &[3]],
            SelfEnsemble::Flips => &[&[], &[3], &[2], &[2, 3]],
        }
    }

    /// Forward passes per fill.
    pub fn passes(self) -> usize {
        self.views().len()
    }
}

impl FromStr for SelfEnsemble {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown ensemble `{s}`: expected single, mirror or flips"
                ))
            })
    }
}

impl std::fmt::Display for SelfEnsemble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_named() {
        for e in SelfEnsemble::ALL {
            assert_eq!(e.to_string().parse::<SelfEnsemble>().unwrap(), e);
        }
        let err = "dihedral".parse::<SelfEnsemble>().unwrap_err().to_string();
        assert!(err.contains("`dihedral`") && err.contains("flips"), "{err}");
    }

    #[test]
    fn each_view_is_distinct_and_starts_with_the_image_itself() {
        for e in SelfEnsemble::ALL {
            let views = e.views();
            assert!(views[0].is_empty(), "{e}: the first view is the image");
            let mut sorted = views.to_vec();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), e.passes(), "{e}: a view repeats");
        }
    }
}
