//! A Fenwick tree over leaves (visible and total lengths).

#[derive(Clone, Debug, Default)]
pub(super) struct Fenwick {
    t: Vec<[usize; 2]>,
}

impl Fenwick {
    pub(super) fn build(vals: impl Iterator<Item = [usize; 2]>) -> Self {
        let mut t: Vec<[usize; 2]> = vals.collect();
        let n = t.len();
        for i in 0..n {
            let j = i | (i + 1);
            if j < n {
                let v = t[i];
                t[j][0] += v[0];
                t[j][1] += v[1];
            }
        }
        Fenwick { t }
    }

    #[inline]
    pub(super) fn add(&mut self, mut i: usize, dvis: isize, dtot: isize) {
        while i < self.t.len() {
            self.t[i][0] = self.t[i][0].wrapping_add_signed(dvis);
            self.t[i][1] = self.t[i][1].wrapping_add_signed(dtot);
            i |= i + 1;
        }
    }

    /// Sums over leaves `[0, k)`.
    #[inline]
    pub(super) fn prefix(&self, mut k: usize) -> [usize; 2] {
        let mut r = [0, 0];
        while k > 0 {
            let v = self.t[k - 1];
            r[0] += v[0];
            r[1] += v[1];
            k &= k - 1;
        }
        r
    }

    /// The largest `k` with `prefix(k)[c] <= target`, and `prefix(k)`.
    #[inline]
    pub(super) fn search(&self, c: usize, target: usize) -> (usize, [usize; 2]) {
        let n = self.t.len();
        let mut pos = 0;
        let mut acc = [0, 0];
        let mut step = if n == 0 { 0 } else { 1usize << (usize::BITS - 1 - n.leading_zeros()) };
        while step > 0 {
            let nxt = pos + step;
            if nxt <= n {
                let v = self.t[nxt - 1];
                if acc[c] + v[c] <= target {
                    pos = nxt;
                    acc[0] += v[0];
                    acc[1] += v[1];
                }
            }
            step >>= 1;
        }
        (pos, acc)
    }
}
