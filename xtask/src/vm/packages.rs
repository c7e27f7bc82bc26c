//! Debian `Packages` indexes: which `linux-image-*-cloud-amd64` packages each suite has, and
//! the choice of the newest one matching what the user asked for (`6.1`, `5.10`, `newest`).
use std::cmp::Ordering;

use super::debver;

/// One suite of the mirror whose index is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Suite {
    pub name: &'static str,
    /// Archive root: `…/debian` or `…/debian-security`.
    pub archive: &'static str,
}

const DEBIAN: &str = "http://deb.debian.org/debian";
const SECURITY: &str = "http://deb.debian.org/debian-security";

/// Suites searched for cloud kernels, oldest first. Security suites carry the newest point
/// release of a stable kernel (bullseye's 5.10 is only updated there now).
pub const SUITES: &[Suite] = &[
    Suite {
        name: "bullseye",
        archive: DEBIAN,
    },
    Suite {
        name: "bullseye-security",
        archive: SECURITY,
    },
    Suite {
        name: "bookworm",
        archive: DEBIAN,
    },
    Suite {
        name: "bookworm-security",
        archive: SECURITY,
    },
    Suite {
        name: "bookworm-backports",
        archive: DEBIAN,
    },
    Suite {
        name: "trixie",
        archive: DEBIAN,
    },
    Suite {
        name: "trixie-security",
        archive: SECURITY,
    },
    Suite {
        name: "sid",
        archive: DEBIAN,
    },
];

impl Suite {
    pub fn index_url(self) -> String {
        format!(
            "{}/dists/{}/main/binary-amd64/Packages.xz",
            self.archive, self.name
        )
    }
}

/// The fields of a package stanza the harness uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// Path below the archive root (`pool/main/l/linux/…deb`).
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    /// Names of the packages it depends on (versions and alternatives dropped).
    pub depends: Vec<String>,
}

/// Parses a `Packages` file, keeping the stanzas whose name `keep` accepts (the whole index has
/// ~60,000; the kernel choice needs only `linux-*`).
pub fn parse_index(text: &str, keep: impl Fn(&str) -> bool) -> Vec<Package> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut p = Package {
            name: String::new(),
            version: String::new(),
            filename: String::new(),
            size: 0,
            sha256: String::new(),
            depends: Vec::new(),
        };
        for line in stanza.lines() {
            // Continuation lines (descriptions) start with a space.
            let Some((key, value)) = line.split_once(": ").filter(|_| !line.starts_with(' '))
            else {
                continue;
            };
            match key {
                "Package" => {
                    if !keep(value) {
                        break;
                    }
                    p.name = value.to_owned();
                }
                "Version" => p.version = value.to_owned(),
                "Filename" => p.filename = value.to_owned(),
                "Size" => p.size = value.parse().unwrap_or(0),
                "SHA256" => p.sha256 = value.to_owned(),
                "Depends" => p.depends = dependency_names(value),
                _ => {}
            }
        }
        if !p.name.is_empty() && !p.version.is_empty() && !p.filename.is_empty() {
            out.push(p);
        }
    }
    out
}

/// `a (>= 1) | b, c (= 2)` → `[a, b, c]`.
fn dependency_names(value: &str) -> Vec<String> {
    value
        .split([',', '|'])
        .filter_map(|d| d.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The kernel release of a cloud image package: `linux-image-6.1.0-50-cloud-amd64[-unsigned]`
/// → `6.1.0-50-cloud-amd64` (debug-symbol packages and meta packages are not images).
pub fn cloud_release(package: &str) -> Option<&str> {
    let rest = package.strip_prefix("linux-image-")?;
    let release = rest.strip_suffix("-unsigned").unwrap_or(rest);
    let first_is_digit = release.bytes().next().is_some_and(|c| c.is_ascii_digit());
    (first_is_digit && release.ends_with("-cloud-amd64")).then_some(release)
}

/// Which kernel the user asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Want {
    /// The newest cloud kernel of any suite.
    Newest,
    /// Kernels whose release starts with this version: `6.1` matches `6.1.0-50-…`, not `6.12…`.
    Prefix(String),
}

impl Want {
    pub fn parse(s: &str) -> Want {
        match s {
            "newest" | "latest" => Want::Newest,
            _ => Want::Prefix(s.to_owned()),
        }
    }

    pub fn matches(&self, release: &str) -> bool {
        match self {
            Want::Newest => true,
            Want::Prefix(p) => release.strip_prefix(p.as_str()).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with('.') || rest.starts_with('-')
            }),
        }
    }
}

impl std::fmt::Display for Want {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Want::Newest => f.write_str("newest"),
            Want::Prefix(p) => f.write_str(p),
        }
    }
}

/// The packages to download for one kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub release: String,
    pub suite: Suite,
    pub image: Package,
    /// Packages the image is split into on newer kernels (`linux-binary-*` has vmlinuz,
    /// `linux-modules-*` the modules); empty when the image package holds both.
    pub parts: Vec<Package>,
}

/// The newest image matching `want` across the suites' indexes; signed before `-unsigned` at
/// the same version (both hold the same vmlinuz and modules).
pub fn choose(indexes: &[(Suite, Vec<Package>)], want: &Want) -> Option<Choice> {
    let mut best: Option<(Suite, &Package, &str)> = None;
    for (suite, packages) in indexes {
        for p in packages {
            let Some(release) = cloud_release(&p.name).filter(|r| want.matches(r)) else {
                continue;
            };
            let better = match best {
                None => true,
                Some((_, b, _)) => match debver::compare(&p.version, &b.version) {
                    Ordering::Greater => true,
                    Ordering::Equal => {
                        b.name.ends_with("-unsigned") && !p.name.ends_with("-unsigned")
                    }
                    Ordering::Less => false,
                },
            };
            if better {
                best = Some((*suite, p, release));
            }
        }
    }
    let (suite, image, release) = best?;
    let packages = &indexes.iter().find(|(s, _)| *s == suite)?.1;
    let parts = image
        .depends
        .iter()
        .filter(|d| d.starts_with("linux-binary-") || d.starts_with("linux-modules-"))
        .filter_map(|d| {
            packages
                .iter()
                .filter(|p| &p.name == d)
                .max_by(|a, b| debver::compare(&a.version, &b.version))
                .cloned()
        })
        .collect();
    Some(Choice {
        release: release.to_owned(),
        suite,
        image: image.clone(),
        parts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOKWORM: &str = "\
Package: linux-image-6.1.0-47-cloud-amd64-unsigned
Source: linux
Version: 6.1.170-1
Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Description: Linux 6.1 for x86-64 cloud
 A long description: with a colon.
Filename: pool/main/l/linux/linux-image-6.1.0-47-cloud-amd64-unsigned_6.1.170-1_amd64.deb
Size: 100
SHA256: aa

Package: linux-image-6.1.0-50-cloud-amd64
Version: 6.1.176-1
Filename: pool/main/l/linux-signed-amd64/linux-image-6.1.0-50-cloud-amd64_6.1.176-1_amd64.deb
Size: 200
SHA256: bb

Package: linux-image-6.1.0-50-cloud-amd64-unsigned
Version: 6.1.176-1
Filename: pool/main/l/linux/linux-image-6.1.0-50-cloud-amd64-unsigned_6.1.176-1_amd64.deb
Size: 201
SHA256: cc

Package: linux-image-6.1.0-50-cloud-amd64-dbg
Version: 6.1.176-1
Filename: pool/main/l/linux/dbg.deb
SHA256: dd

Package: nftables
Version: 1.0.6-2
Filename: pool/main/n/nftables/nftables.deb
SHA256: ee
";

    const BULLSEYE_SECURITY: &str = "\
Package: linux-image-6.1.0-0.deb11.52-cloud-amd64
Version: 6.1.162-1~deb11u1
Filename: pool/updates/main/l/a.deb
SHA256: 11

Package: linux-image-5.10.0-46-cloud-amd64-unsigned
Version: 5.10.262-1
Filename: pool/updates/main/l/b.deb
SHA256: 22
";

    const SID: &str = "\
Package: linux-image-7.2.13+deb14-cloud-amd64
Version: 7.2.13-1
Depends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, linux-base-7.2.13+deb14-cloud-amd64 (= 7.2.13-1), linux-binary-7.2.13+deb14-cloud-amd64 (= 7.2.13-1), linux-modules-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)
Filename: pool/main/l/linux-signed-amd64/img.deb
SHA256: 33

Package: linux-binary-7.2.13+deb14-cloud-amd64
Version: 7.2.13-1
Filename: pool/main/l/linux-signed-amd64/bin.deb
SHA256: 44

Package: linux-modules-7.2.13+deb14-cloud-amd64
Version: 7.2.13-1
Filename: pool/main/l/linux/mod.deb
SHA256: 55

Package: linux-image-cloud-amd64
Version: 7.2.13-1
Filename: pool/main/l/meta.deb
SHA256: 66
";

    fn suite(name: &str) -> Suite {
        *SUITES.iter().find(|s| s.name == name).unwrap()
    }

    fn indexes() -> Vec<(Suite, Vec<Package>)> {
        let linux = |n: &str| n.starts_with("linux-");
        vec![
            (
                suite("bullseye-security"),
                parse_index(BULLSEYE_SECURITY, linux),
            ),
            (suite("bookworm"), parse_index(BOOKWORM, linux)),
            (suite("sid"), parse_index(SID, linux)),
        ]
    }

    #[test]
    fn parses_stanzas_and_dependency_names() {
        let p = parse_index(BOOKWORM, |n| n.starts_with("linux-"));
        assert_eq!(p.len(), 4, "nftables is filtered out");
        assert_eq!(p[0].version, "6.1.170-1");
        assert_eq!(p[0].size, 100);
        assert_eq!(
            p[0].depends,
            [
                "kmod",
                "linux-base",
                "initramfs-tools",
                "linux-initramfs-tool"
            ]
        );
        assert_eq!(p[1].sha256, "bb");
    }

    #[test]
    fn cloud_release_of_image_packages_only() {
        assert_eq!(
            cloud_release("linux-image-6.1.0-50-cloud-amd64-unsigned"),
            Some("6.1.0-50-cloud-amd64")
        );
        assert_eq!(cloud_release("linux-image-6.1.0-50-cloud-amd64-dbg"), None);
        assert_eq!(cloud_release("linux-image-cloud-amd64"), None);
        assert_eq!(cloud_release("linux-image-6.1.0-50-amd64"), None);
    }

    #[test]
    fn prefix_matches_whole_version_components() {
        let w = Want::parse("6.1");
        assert!(w.matches("6.1.0-50-cloud-amd64"));
        assert!(w.matches("6.1.0-0.deb11.52-cloud-amd64"));
        assert!(!w.matches("6.12.95+deb12-cloud-amd64"));
        assert!(Want::parse("6.12").matches("6.12.95+deb12-cloud-amd64"));
        assert_eq!(Want::parse("newest"), Want::Newest);
    }

    #[test]
    fn picks_the_newest_version_across_suites_signed_first() {
        let c = choose(&indexes(), &Want::parse("6.1")).unwrap();
        assert_eq!(
            c.release, "6.1.0-50-cloud-amd64",
            "6.1.176-1 beats 6.1.162-1~deb11u1"
        );
        assert_eq!(c.image.name, "linux-image-6.1.0-50-cloud-amd64");
        assert_eq!(c.suite.name, "bookworm");
        assert!(c.parts.is_empty());

        let c = choose(&indexes(), &Want::parse("5.10")).unwrap();
        assert_eq!(c.release, "5.10.0-46-cloud-amd64");
        assert_eq!(c.suite.archive, SECURITY);
        assert_eq!(
            c.suite.index_url(),
            "http://deb.debian.org/debian-security/dists/bullseye-security/main/binary-amd64/Packages.xz"
        );
        assert_eq!(choose(&indexes(), &Want::parse("4.19")), None);
    }

    #[test]
    fn newest_brings_the_split_binary_and_modules_packages() {
        let c = choose(&indexes(), &Want::Newest).unwrap();
        assert_eq!(c.release, "7.2.13+deb14-cloud-amd64");
        let parts: Vec<&str> = c.parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            parts,
            [
                "linux-binary-7.2.13+deb14-cloud-amd64",
                "linux-modules-7.2.13+deb14-cloud-amd64"
            ]
        );
    }
}
