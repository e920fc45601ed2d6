//! The voxel-to-world map of a volume: a 4×4 affine from voxel indices `(i, j, k)` to millimetres
//! in RAS+ (NIfTI's world: +x toward the patient's right, +y anterior, +z superior). DICOM's
//! patient space is LPS+ (+x left, +y posterior, +z superior); the two differ by negating x and y.

use serde::{Deserialize, Serialize};

/// Row-major 4×4; the last row is `[0, 0, 0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Affine(pub [[f64; 4]; 4]);

impl Affine {
    /// Axis-aligned voxels of the given size at the origin (the geometry of a plain array).
    pub fn scaling(spacing: [f64; 3]) -> Self {
        let mut m = [[0.0; 4]; 4];
        for (axis, s) in spacing.iter().enumerate() {
            m[axis][axis] = *s;
        }
        m[3][3] = 1.0;
        Self(m)
    }

    /// From the three columns (world steps of one voxel along i, j, k) and the position of voxel 0.
    pub fn from_columns(i: [f64; 3], j: [f64; 3], k: [f64; 3], origin: [f64; 3]) -> Self {
        let mut m = [[0.0; 4]; 4];
        for row in 0..3 {
            m[row] = [i[row], j[row], k[row], origin[row]];
        }
        m[3][3] = 1.0;
        Self(m)
    }

    /// The same map with the world's x and y negated: LPS ↔ RAS.
    pub fn flip_xy(mut self) -> Self {
        for row in 0..2 {
            for v in &mut self.0[row] {
                *v = -*v;
            }
        }
        self
    }

    /// The world position of a voxel index.
    pub fn apply(&self, ijk: [f64; 3]) -> [f64; 3] {
        let m = &self.0;
        std::array::from_fn(|r| m[r][0] * ijk[0] + m[r][1] * ijk[1] + m[r][2] * ijk[2] + m[r][3])
    }

    /// The world step of one voxel along axis `axis` (0 = i, 1 = j, 2 = k).
    pub fn column(&self, axis: usize) -> [f64; 3] {
        std::array::from_fn(|r| self.0[r][axis])
    }

    /// Voxel size in mm along i, j, k.
    pub fn spacing(&self) -> [f64; 3] {
        std::array::from_fn(|axis| norm(self.column(axis)))
    }

    /// Determinant of the 3×3 part: signed voxel volume in mm³.
    pub fn determinant(&self) -> f64 {
        let [a, b, c] = [self.column(0), self.column(1), self.column(2)];
        dot(a, cross(b, c))
    }

    /// Voxel volume in mm³.
    pub fn voxel_volume(&self) -> f64 {
        self.determinant().abs()
    }

    /// Whether every entry is finite and the voxels have a volume.
    pub fn is_valid(&self) -> bool {
        self.0.iter().flatten().all(|v| v.is_finite()) && self.voxel_volume() > 1e-12
    }

    /// The world axis each voxel axis mostly runs along, as the RAS+ letter it points to
    /// (`R`/`L`, `A`/`P`, `S`/`I`): `"RAS"` for a canonical NIfTI, `"LPS"` for DICOM's own order.
    pub fn orientation(&self) -> String {
        (0..3)
            .map(|axis| {
                let c = self.column(axis);
                let (world, v) = (0..3)
                    .map(|w| (w, c[w]))
                    .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                    .unwrap_or((0, 0.0));
                let letters = [('R', 'L'), ('A', 'P'), ('S', 'I')][world];
                if v >= 0.0 { letters.0 } else { letters.1 }
            })
            .collect()
    }

    /// The NIfTI quaternion form `(b, c, d, qfac, offset)` of an affine whose columns are
    /// orthogonal, or `None` where they are not (a sheared grid, such as a gantry tilt, which
    /// only the sform can hold).
    pub fn quaternion(&self) -> Option<([f64; 3], f64, [f64; 3])> {
        let spacing = self.spacing();
        let mut r: [[f64; 3]; 3] =
            std::array::from_fn(|row| std::array::from_fn(|col| self.0[row][col] / spacing[col]));
        for (a, b) in [(0, 1), (0, 2), (1, 2)] {
            let (ca, cb) = (col(&r, a), col(&r, b));
            if dot(ca, cb).abs() > 1e-4 {
                return None;
            }
        }
        let det = dot(col(&r, 0), cross(col(&r, 1), col(&r, 2)));
        let qfac = if det < 0.0 {
            for row in &mut r {
                row[2] = -row[2];
            }
            -1.0
        } else {
            1.0
        };
        // Shepperd's method on the proper rotation r.
        let (b, c, d);
        let trace = r[0][0] + r[1][1] + r[2][2];
        if trace > 0.0 {
            let a = 0.5 * (1.0 + trace).sqrt();
            b = (r[2][1] - r[1][2]) / (4.0 * a);
            c = (r[0][2] - r[2][0]) / (4.0 * a);
            d = (r[1][0] - r[0][1]) / (4.0 * a);
        } else if r[0][0] > r[1][1] && r[0][0] > r[2][2] {
            let s = 2.0 * (1.0 + r[0][0] - r[1][1] - r[2][2]).sqrt();
            let a = (r[2][1] - r[1][2]) / s;
            let sign = if a < 0.0 { -1.0 } else { 1.0 };
            b = sign * 0.25 * s;
            c = sign * (r[0][1] + r[1][0]) / s;
            d = sign * (r[0][2] + r[2][0]) / s;
        } else if r[1][1] > r[2][2] {
            let s = 2.0 * (1.0 + r[1][1] - r[0][0] - r[2][2]).sqrt();
            let a = (r[0][2] - r[2][0]) / s;
            let sign = if a < 0.0 { -1.0 } else { 1.0 };
            b = sign * (r[0][1] + r[1][0]) / s;
            c = sign * 0.25 * s;
            d = sign * (r[1][2] + r[2][1]) / s;
        } else {
            let s = 2.0 * (1.0 + r[2][2] - r[0][0] - r[1][1]).sqrt();
            let a = (r[1][0] - r[0][1]) / s;
            let sign = if a < 0.0 { -1.0 } else { 1.0 };
            b = sign * (r[0][2] + r[2][0]) / s;
            c = sign * (r[1][2] + r[2][1]) / s;
            d = sign * 0.25 * s;
        }
        Some(([b, c, d], qfac, [self.0[0][3], self.0[1][3], self.0[2][3]]))
    }

    /// The NIfTI-1 qform: quaternion `(b, c, d)`, `qfac`, voxel sizes and offset.
    pub fn from_quaternion(bcd: [f64; 3], qfac: f64, spacing: [f64; 3], offset: [f64; 3]) -> Self {
        let [b, c, d] = bcd;
        let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
        let r = [
            [
                a * a + b * b - c * c - d * d,
                2.0 * (b * c - a * d),
                2.0 * (b * d + a * c),
            ],
            [
                2.0 * (b * c + a * d),
                a * a + c * c - b * b - d * d,
                2.0 * (c * d - a * b),
            ],
            [
                2.0 * (b * d - a * c),
                2.0 * (c * d + a * b),
                a * a + d * d - c * c - b * b,
            ],
        ];
        let qfac = if qfac < 0.0 { -1.0 } else { 1.0 };
        let scale = [spacing[0], spacing[1], spacing[2] * qfac];
        let column = |axis: usize| std::array::from_fn(|row| r[row][axis] * scale[axis]);
        Self::from_columns(column(0), column(1), column(2), offset)
    }
}

fn col(r: &[[f64; 3]; 3], c: usize) -> [f64; 3] {
    [r[0][c], r[1][c], r[2][c]]
}

pub(crate) fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

pub(crate) fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

pub(crate) fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &Affine, b: &Affine) -> bool {
        a.0.iter()
            .flatten()
            .zip(b.0.iter().flatten())
            .all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn quaternion_round_trips_rotations_and_flips() {
        let s = std::f64::consts::FRAC_1_SQRT_2;
        let cases = [
            Affine::scaling([0.7, 0.7, 2.5]),
            Affine::scaling([0.7, 0.7, 2.5]).flip_xy(),
            Affine::from_columns(
                [0.0, 1.0, 0.0],
                [0.0, 0.0, -2.0],
                [3.0, 0.0, 0.0],
                [1., 2., 3.],
            ),
            Affine::from_columns([s, s, 0.0], [-s, s, 0.0], [0.0, 0.0, -1.5], [-9., 0., 4.]),
        ];
        for a in cases {
            let (bcd, qfac, offset) = a.quaternion().expect("orthogonal");
            let back = Affine::from_quaternion(bcd, qfac, a.spacing(), offset);
            assert!(close(&a, &back), "{a:?} → {back:?}");
        }
        let sheared =
            Affine::from_columns([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.3, 1.0], [0.; 3]);
        assert!(sheared.quaternion().is_none());
    }

    #[test]
    fn spacing_volume_and_orientation() {
        let a = Affine::scaling([0.5, 0.5, 2.0]).flip_xy();
        assert_eq!(a.spacing(), [0.5, 0.5, 2.0]);
        assert!((a.voxel_volume() - 0.5).abs() < 1e-12);
        assert_eq!(a.orientation(), "LPS");
        assert_eq!(Affine::scaling([1.0; 3]).orientation(), "RAS");
        assert_eq!(a.apply([2.0, 0.0, 1.0]), [-1.0, -0.0, 2.0]);
    }
}
