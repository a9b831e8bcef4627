//! Page keys: xxh3 of the contents, with all-zero pages as one class.

use crate::Page;

/// The key of every all-zero page (found without hashing).  A non-zero
/// page whose hash happens to be this value joins the zero class and is
/// told apart by the byte comparison before any share.
pub const ZERO_KEY: u64 = 0;

/// Whether every byte of the page is zero (word-wise, stops at the first
/// non-zero 64-byte block).
pub fn is_zero(page: &Page) -> bool {
    page.chunks_exact(64).all(|block| {
        block
            .chunks_exact(8)
            .fold(0u64, |acc, w| acc | u64::from_ne_bytes(word(w)))
            == 0
    })
}

fn word(w: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(w);
    out
}

/// The table key of a page: [`ZERO_KEY`] for an all-zero page, its xxh3
/// (64-bit) otherwise.
pub fn page_key(page: &Page) -> u64 {
    if is_zero(page) {
        ZERO_KEY
    } else {
        xxhash_rust::xxh3::xxh3_64(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_class() {
        let mut p = [0u8; crate::PAGE_SIZE];
        assert!(is_zero(&p));
        assert_eq!(page_key(&p), ZERO_KEY);
        p[4095] = 1;
        assert!(!is_zero(&p));
        assert_ne!(page_key(&p), ZERO_KEY);
        let mut q = [0u8; crate::PAGE_SIZE];
        q[0] = 1;
        assert_ne!(page_key(&p), page_key(&q));
    }
}
