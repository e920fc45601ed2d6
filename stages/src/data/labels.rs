//! Class labels per pixel, the form every stage after `split` uses: 0 background, 1 GGO,
//! 2 consolidation, 3 other lung. Made from the Kaggle four-channel masks by the rule below.

use ndarray::{Array2, ArrayView3};

use super::kaggle::{BACKGROUND, CONSOLIDATION, GGO, OTHER_LUNG};

pub const LABEL_BACKGROUND: u8 = 0;
pub const LABEL_GGO: u8 = 1;
pub const LABEL_CONSOLIDATION: u8 = 2;
pub const LABEL_OTHER_LUNG: u8 = 3;
pub const LABEL_NAMES: [&str; 4] = ["background", "ggo", "consolidation", "other_lung"];

/// The label of one pixel from its four mask channels. The real masks are not one-hot (some
/// pixels are both background and lesion), so the rule is: lesion wins, and of two lesions the
/// denser one — consolidation > GGO > other lung > background.
pub fn label_of(channels: [bool; 4]) -> u8 {
    if channels[CONSOLIDATION] {
        LABEL_CONSOLIDATION
    } else if channels[GGO] {
        LABEL_GGO
    } else if channels[OTHER_LUNG] {
        LABEL_OTHER_LUNG
    } else {
        let _ = channels[BACKGROUND];
        LABEL_BACKGROUND
    }
}

/// Labels `(H,W)` of a `(H,W,4)` mask slice.
pub fn from_masks(mask: ArrayView3<bool>) -> Array2<u8> {
    let (h, w, _) = mask.dim();
    Array2::from_shape_fn((h, w), |(y, x)| {
        label_of([
            mask[[y, x, 0]],
            mask[[y, x, 1]],
            mask[[y, x, 2]],
            mask[[y, x, 3]],
        ])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lesion_wins_and_consolidation_beats_ggo() {
        assert_eq!(
            label_of([true, false, false, true]),
            LABEL_GGO,
            "lesion wins over background"
        );
        assert_eq!(label_of([false, true, true, true]), LABEL_CONSOLIDATION);
        assert_eq!(
            label_of([true, true, false, false]),
            LABEL_CONSOLIDATION,
            "consolidation wins over GGO"
        );
        assert_eq!(label_of([false, false, true, true]), LABEL_OTHER_LUNG);
        assert_eq!(label_of([false, false, false, true]), LABEL_BACKGROUND);
        assert_eq!(
            label_of([false, false, false, false]),
            LABEL_BACKGROUND,
            "no channel set is background"
        );
    }
}
