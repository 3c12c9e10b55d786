//! RFC 6962 / RFC 9162 §2.1 Merkle tree hashing, proofs and their checks.

use sha2::{Digest, Sha256};

use crate::chain::Hash;

/// `SHA-256(0x00 || leaf data)`; a ledger leaf's data is the 32-byte event hash.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Largest power of two strictly smaller than `n` (n ≥ 2).
fn split_point(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// The root over already-hashed leaves (MTH).
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split_point(n);
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

/// The compact range of a growing tree: roots of its perfect subtrees, left
/// to right (sizes follow the binary digits of the tree size). Appending and
/// taking the root cost O(log n), so the sealer never rereads old leaves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends one leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut node = leaf;
        let mut index = self.size;
        while index & 1 == 1 {
            match self.nodes.pop() {
                Some(left) => node = node_hash(&left, &node),
                None => break,
            }
            index >>= 1;
        }
        self.nodes.push(node);
        self.size += 1;
    }

    pub fn root(&self) -> Hash {
        let mut iter = self.nodes.iter().rev();
        let Some(last) = iter.next() else {
            return empty_root();
        };
        iter.fold(*last, |acc, left| node_hash(left, &acc))
    }

    /// Serialised as the concatenated node hashes (the size is stored beside it).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.nodes.concat()
    }

    pub fn from_bytes(size: u64, bytes: &[u8]) -> Option<Self> {
        if !bytes.len().is_multiple_of(32) || bytes.len() / 32 != size.count_ones() as usize {
            return None;
        }
        let nodes = bytes
            .chunks_exact(32)
            .map(|c| c.try_into().ok())
            .collect::<Option<Vec<Hash>>>()?;
        Some(Self { size, nodes })
    }
}

/// PATH(m, D[n]): the audit path of leaf `index` (RFC 9162 §2.1.3.1).
pub fn inclusion_proof(index: usize, leaves: &[Hash]) -> Vec<Hash> {
    let mut proof = Vec::new();
    path(index, leaves, &mut proof);
    proof
}

fn path(m: usize, leaves: &[Hash], out: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split_point(n);
    if m < k {
        path(m, &leaves[..k], out);
        out.push(root_of(&leaves[k..]));
    } else {
        path(m - k, &leaves[k..], out);
        out.push(root_of(&leaves[..k]));
    }
}

/// Checks an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && r == *root
}

/// PROOF(m, D[n]): a consistency proof from the first `m` leaves to all of them.
pub fn consistency_proof(m: usize, leaves: &[Hash]) -> Vec<Hash> {
    let mut proof = Vec::new();
    if m > 0 && m < leaves.len() {
        subproof(m, leaves, true, &mut proof);
    }
    proof
}

fn subproof(m: usize, leaves: &[Hash], complete: bool, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !complete {
            out.push(root_of(leaves));
        }
        return;
    }
    let k = split_point(n);
    if m <= k {
        subproof(m, &leaves[..k], complete, out);
        out.push(root_of(&leaves[k..]));
    } else {
        subproof(m - k, &leaves[k..], false, out);
        out.push(root_of(&leaves[..k]));
    }
}

/// Checks a consistency proof between two tree heads (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> bool {
    if first > second {
        return false;
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    if first == 0 {
        return proof.is_empty();
    }
    let mut path: Vec<Hash> = proof.to_vec();
    if first.is_power_of_two() {
        path.insert(0, *first_root);
    }
    let (mut f_n, mut s_n) = (first - 1, second - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let Some((head, rest)) = path.split_first() else {
        return false;
    };
    let (mut fr, mut sr) = (*head, *head);
    for c in rest {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    fr == *first_root && sr == *second_root && s_n == 0
}

/// A subtree of the RFC 6962 tree: leaves `start..end` (0-based, end exclusive).
pub type LeafRange = (u64, u64);

/// The subtrees whose roots form the audit path of leaf `index` in a tree of
/// `size` leaves, deepest first (the order of PATH(m, D[n])).
pub fn inclusion_ranges(index: u64, size: u64) -> Vec<LeafRange> {
    let mut out = Vec::new();
    let (mut start, mut end) = (0u64, size);
    let mut path = Vec::new();
    while end - start > 1 {
        let k = split_point((end - start) as usize) as u64;
        if index < start + k {
            path.push((start + k, end));
            end = start + k;
        } else {
            path.push((start, start + k));
            start += k;
        }
    }
    out.extend(path.into_iter().rev());
    out
}

/// The subtrees whose roots form PROOF(m, D[n]), in proof order.
pub fn consistency_ranges(m: u64, n: u64) -> Vec<LeafRange> {
    let mut out = Vec::new();
    if m > 0 && m < n {
        subproof_ranges(m, 0, n, true, &mut out);
    }
    out
}

fn subproof_ranges(m: u64, start: u64, end: u64, complete: bool, out: &mut Vec<LeafRange>) {
    let n = end - start;
    if m == n {
        if !complete {
            out.push((start, end));
        }
        return;
    }
    let k = split_point(n as usize) as u64;
    if m <= k {
        subproof_ranges(m, start, start + k, complete, out);
        out.push((start + k, end));
    } else {
        subproof_ranges(m - k, start + k, end, false, out);
        out.push((start, start + k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&[i as u8; 32])).collect()
    }

    #[test]
    fn frontier_matches_recursive_root() {
        let all = leaves(70);
        let mut f = Frontier::new();
        assert_eq!(f.root(), empty_root());
        for (i, leaf) in all.iter().enumerate() {
            f.push(*leaf);
            assert_eq!(f.root(), root_of(&all[..=i]), "size {}", i + 1);
            let again = Frontier::from_bytes(f.size(), &f.to_bytes()).unwrap();
            assert_eq!(again, f);
        }
    }

    #[test]
    fn inclusion_proofs_verify_and_fail_when_wrong() {
        for n in 1..40 {
            let all = leaves(n);
            let root = root_of(&all);
            for i in 0..n {
                let proof = inclusion_proof(i, &all);
                assert!(verify_inclusion(i as u64, n as u64, &all[i], &proof, &root));
                let other = (i + 1) % n;
                if other != i {
                    assert!(!verify_inclusion(
                        other as u64,
                        n as u64,
                        &all[i],
                        &proof,
                        &root
                    ));
                }
            }
        }
    }

    #[test]
    fn consistency_proofs_verify_and_fail_when_rewritten() {
        for n in 1..34 {
            let all = leaves(n);
            for m in 1..=n {
                let proof = consistency_proof(m, &all);
                let (r1, r2) = (root_of(&all[..m]), root_of(&all));
                assert!(
                    verify_consistency(m as u64, n as u64, &r1, &r2, &proof),
                    "{m}->{n}"
                );
                if m < n {
                    let mut rewritten = all.clone();
                    rewritten[m - 1] = leaf_hash(b"evil");
                    let bad_r1 = root_of(&rewritten[..m]);
                    assert!(!verify_consistency(
                        m as u64, n as u64, &bad_r1, &r2, &proof
                    ));
                }
            }
        }
    }

    #[test]
    fn proof_ranges_match_the_recursive_proofs() {
        for n in 1..40usize {
            let all = leaves(n);
            for i in 0..n {
                let by_range: Vec<Hash> = inclusion_ranges(i as u64, n as u64)
                    .into_iter()
                    .map(|(a, b)| root_of(&all[a as usize..b as usize]))
                    .collect();
                assert_eq!(by_range, inclusion_proof(i, &all), "leaf {i} of {n}");
            }
            for m in 1..=n {
                let by_range: Vec<Hash> = consistency_ranges(m as u64, n as u64)
                    .into_iter()
                    .map(|(a, b)| root_of(&all[a as usize..b as usize]))
                    .collect();
                assert_eq!(by_range, consistency_proof(m, &all), "{m} -> {n}");
            }
        }
    }

    /// RFC 6962 test vector: the empty root and the known 8-leaf root from
    /// certificate-transparency-go's merkle tests.
    #[test]
    fn known_vectors() {
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let data: Vec<Vec<u8>> = vec![
            vec![],
            vec![0x00],
            vec![0x10],
            vec![0x20, 0x21],
            vec![0x30, 0x31],
            vec![0x40, 0x41, 0x42, 0x43],
            vec![0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
            vec![
                0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d,
                0x6e, 0x6f,
            ],
        ];
        let hashed: Vec<Hash> = data.iter().map(|d| leaf_hash(d)).collect();
        assert_eq!(
            hex::encode(root_of(&hashed)),
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
        );
    }
}
