//! Prints the ledger-format test vectors (see docs/ledger-format.md).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let v = queue_eventstore::vectors::compute()?;
    println!("MAC key id: {}", queue_eventstore::vectors::MAC_KEY_ID);
    println!("MAC key (hex): {}", v.mac_key_hex);
    println!("checkpoint private key: {}", v.checkpoint_private_key);
    println!("checkpoint verifier key: {}", v.checkpoint_verifier_key);
    for (i, e) in v.events.iter().enumerate() {
        println!(
            "\nevent {}:\ncanonical: {}\nprev_hash: {}\nhash: {}\nmac: {}",
            i + 1,
            e.canonical,
            e.prev_hash,
            e.hash,
            e.mac
        );
    }
    println!("\nleaf hashes:");
    for l in &v.leaf_hashes {
        println!("{l}");
    }
    println!("root(2): {}\nroot(3): {}", v.root_2, v.root_3);
    println!(
        "inclusion proof, leaf index 1, size 3: {:?}",
        v.inclusion_proof_leaf_1_size_3
    );
    println!("consistency proof 2 -> 3: {:?}", v.consistency_proof_2_to_3);
    println!("\ncheckpoint note:\n{}", v.checkpoint_note);
    Ok(())
}
