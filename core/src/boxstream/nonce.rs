/// A box-stream nonce: a 24-byte big-endian counter that wraps from ff..ff to
/// 00..00. (libsodium's `sodium_increment` is little-endian: not that one.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Nonce(pub(super) [u8; 24]);

impl Nonce {
    /// The current value, then counts one up.
    pub(super) fn next(&mut self) -> [u8; 24] {
        let current = self.0;
        for byte in self.0.iter_mut().rev() {
            let (value, carry) = byte.overflowing_add(1);
            *byte = value;
            if !carry {
                break;
            }
        }
        current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_big_endian_with_carry_and_wrap() {
        let mut n = Nonce([0; 24]);
        n.0[23] = 0xfe;
        n.next();
        assert_eq!(n.0[22..], [0x00, 0xff]);
        n.next();
        assert_eq!(n.0[22..], [0x01, 0x00]);

        let mut n = Nonce([0xff; 24]);
        assert_eq!(n.next(), [0xff; 24]);
        assert_eq!(n.0, [0; 24]);
    }
}
