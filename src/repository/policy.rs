//! Which versions of a model to serve: TF Serving's `ServableVersionPolicy`
//! (`latest { num_versions: n }`, `all {}`, `specific { versions: ... }`).
use std::collections::BTreeSet;
use std::fmt;

/// Which versions of a model should be served (TF Serving's ServableVersionPolicy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionPolicy {
    /// The `n` highest versions present on disk (`n = 0` is treated as 1, as TF Serving does).
    Latest(u32),
    /// Every version present on disk.
    All,
    /// Exactly these versions, those of them that are present on disk.
    Specific(BTreeSet<i64>),
}

impl Default for VersionPolicy {
    /// TF Serving's default: `latest { num_versions: 1 }`.
    fn default() -> Self {
        VersionPolicy::Latest(1)
    }
}

impl VersionPolicy {
    /// The versions to serve, given the (stable, loadable) versions present on disk.
    /// latest{n}: the n highest (n = 0 is treated as 1, as TF does); all: every one; specific: the listed
    /// ones that are present. `on_disk` may be in any order and may hold duplicates.
    pub fn aspired(&self, on_disk: &[i64]) -> BTreeSet<i64> {
        match self {
            VersionPolicy::Latest(n) => {
                let n = usize::try_from((*n).max(1)).unwrap_or(usize::MAX);
                let present: BTreeSet<i64> = on_disk.iter().copied().collect();
                present.into_iter().rev().take(n).collect()
            }
            VersionPolicy::All => on_disk.iter().copied().collect(),
            VersionPolicy::Specific(wanted) => on_disk.iter().copied().filter(|v| wanted.contains(v)).collect(),
        }
    }
}

impl fmt::Display for VersionPolicy {
    /// The text-format spelling: `latest { num_versions: 2 }`, `all`, `specific { versions: [1, 3] }`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionPolicy::Latest(n) => write!(f, "latest {{ num_versions: {n} }}"),
            VersionPolicy::All => f.write_str("all"),
            VersionPolicy::Specific(versions) => {
                f.write_str("specific { versions: [")?;
                for (i, v) in versions.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("] }")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[i64]) -> BTreeSet<i64> {
        v.iter().copied().collect()
    }

    #[test]
    fn default_is_latest_one() {
        assert_eq!(VersionPolicy::default(), VersionPolicy::Latest(1));
    }

    #[test]
    fn latest_one_picks_the_highest() {
        assert_eq!(VersionPolicy::Latest(1).aspired(&[1, 3, 2]), set(&[3]));
    }

    #[test]
    fn latest_n_picks_the_n_highest() {
        assert_eq!(VersionPolicy::Latest(2).aspired(&[5, 1, 10, 7]), set(&[7, 10]));
    }

    #[test]
    fn latest_zero_is_treated_as_one() {
        assert_eq!(VersionPolicy::Latest(0).aspired(&[1, 2, 3]), set(&[3]));
    }

    #[test]
    fn latest_more_than_present_takes_all() {
        assert_eq!(VersionPolicy::Latest(5).aspired(&[2, 1]), set(&[1, 2]));
        assert_eq!(VersionPolicy::Latest(u32::MAX).aspired(&[4]), set(&[4]));
    }

    #[test]
    fn latest_ignores_duplicates_on_disk() {
        // "0003" and "3" parse to the same version; it must count once.
        assert_eq!(VersionPolicy::Latest(2).aspired(&[3, 3, 1, 2]), set(&[2, 3]));
    }

    #[test]
    fn all_takes_every_version() {
        assert_eq!(VersionPolicy::All.aspired(&[3, 1, 2]), set(&[1, 2, 3]));
    }

    #[test]
    fn specific_takes_the_listed_ones_present() {
        let policy = VersionPolicy::Specific(set(&[42, 43, 99]));
        assert_eq!(policy.aspired(&[1, 42, 43, 44]), set(&[42, 43]));
    }

    #[test]
    fn specific_with_none_present_is_empty() {
        let policy = VersionPolicy::Specific(set(&[7]));
        assert!(policy.aspired(&[1, 2]).is_empty());
    }

    #[test]
    fn nothing_on_disk_means_nothing_aspired() {
        assert!(VersionPolicy::Latest(1).aspired(&[]).is_empty());
        assert!(VersionPolicy::All.aspired(&[]).is_empty());
        assert!(VersionPolicy::Specific(set(&[1])).aspired(&[]).is_empty());
    }

    #[test]
    fn display() {
        assert_eq!(VersionPolicy::Latest(1).to_string(), "latest { num_versions: 1 }");
        assert_eq!(VersionPolicy::Latest(2).to_string(), "latest { num_versions: 2 }");
        assert_eq!(VersionPolicy::All.to_string(), "all");
        assert_eq!(VersionPolicy::Specific(set(&[3, 1])).to_string(), "specific { versions: [1, 3] }");
        assert_eq!(VersionPolicy::Specific(set(&[42])).to_string(), "specific { versions: [42] }");
        assert_eq!(VersionPolicy::Specific(BTreeSet::new()).to_string(), "specific { versions: [] }");
    }
}
