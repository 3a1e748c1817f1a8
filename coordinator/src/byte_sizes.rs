//! Byte sizes in flags: `1048576`, `512KiB`, `20MiB`, `1GiB`.

/// Parses `1048576`, `512KiB`, `20MiB`, `1GiB` (also `KB`/`MB`/`GB` as powers of 1000).
pub fn parse_bytes(value: &str) -> Result<u64, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let bad = || format!("{value:?} is not a size: use e.g. 1048576, 512KiB, 20MiB or 1GiB");
    let number: u64 = number.parse().map_err(|_| bad())?;
    let unit: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(bad()),
    };
    number.checked_mul(unit).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("20MiB"), Ok(20 << 20));
        assert_eq!(parse_bytes("2 KB"), Ok(2_000));
        for bad in ["", "MiB", "1.5MiB", "-1", "3TB"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
    }
}
