//! The plan: the A/B layout of the build (`build-initrd/definitions/`, read by the build's
//! repart planner, which names and sizes the partitions and derives their PARTUUIDs from the
//! root hash exactly as `xorbang-build disk` does), placed on the disk by the build's disk
//! layout, with what fills each partition; then the writes that carry it out, as plain data:
//! data first, the partition table last.

use std::fs::File;
use std::path::{Path, PathBuf};

use xorbang_build::boot::disk::{self, DiskError, DiskLayout};
use xorbang_build::boot::repart::{self, BuildOutputs, CopyBlocks, RepartError};
use xorbang_build::image::verified::ImageIdentity;
use xorbang_formats::gpt::{self, GptWriteError, Guid, PartitionSpec, SectorSize};

use crate::running::RunningImage;
use crate::units::{Size, MIB};

const SECTOR: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot lay out the A/B partitions")]
    Repart(#[from] RepartError),
    #[error("cannot lay out the disk")]
    Disk(#[from] DiskError),
    #[error("cannot write {}", .0.display())]
    Scratch(PathBuf, #[source] std::io::Error),
    #[error("cannot lay out the partition table for {size} bytes")]
    Gpt {
        size: u64,
        #[source]
        source: GptWriteError,
    },
}

/// What fills a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// The running image: the data device's first `image_bytes`.
    Image,
    /// Its hash area (superblock and tree): the hash device's first `hash_bytes`.
    HashArea,
    /// A file made for this disk (the ESP, the /var file system).
    File {
        path: PathBuf,
        bytes: u64,
        what: String,
    },
    /// An empty slot: its first and last MiB are zeroed, so no stale signature remains.
    EmptySlot,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedPartition {
    pub number: u32,
    pub spec: PartitionSpec,
    pub content: Content,
}

impl PlannedPartition {
    pub fn offset(&self) -> u64 {
        self.spec.first_lba.0 * SECTOR
    }

    pub fn bytes(&self) -> u64 {
        (self.spec.last_lba.0 + 1 - self.spec.first_lba.0) * SECTOR
    }

    /// `partition 2 (xorbang-demo_7)`, for messages.
    pub fn name(&self) -> String {
        format!("partition {} ({})", self.number, self.spec.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub partitions: Vec<PlannedPartition>,
    pub disk_guid: Guid,
    /// The smallest disk that holds the layout.
    pub needed_bytes: u64,
}

/// What the ESP partition holds, for the plan's source column.
pub struct EspFile<'a> {
    pub image: &'a Path,
    pub contents: String,
}

/// Lays the running image out in the built-in A/B layout. `scratch` receives the /var
/// file system (the build's `Format=ext4`) and the stand-ins below.
pub fn plan(image: &RunningImage, esp: &EspFile, scratch: &Path) -> Result<Plan, PlanError> {
    let definitions = repart::default_ab_definitions()?;
    // repart sizes slots by their sources' lengths, and the installer's sources are regions
    // of block devices (whose length reads as 0): it gets sparse stand-ins of the image's
    // and the hash area's exact lengths. Nothing reads their bytes.
    let image_stand_in = stand_in(scratch, "root-image.length", image.image_bytes)?;
    let tree_stand_in = stand_in(scratch, "root-verity.length", image.hash_bytes)?;
    let identity = ImageIdentity {
        image_id: Some(image.image_id.clone()),
        image_version: Some(image.version.clone()),
    };
    let outputs = BuildOutputs {
        root_hash: &image.root_hash,
        identity: &identity,
        image: &image_stand_in,
        tree: &tree_stand_in,
        esp: Some(esp.image),
        scratch,
    };
    let partitions = repart::partitions(Path::new("definitions"), &definitions, &outputs)?;
    let DiskLayout {
        specs,
        disk_guid,
        disk_bytes,
    } = disk::plan_disk(&partitions)?;
    let mut planned = Vec::new();
    for (index, ((definition, partition), spec)) in
        definitions.iter().zip(&partitions).zip(specs).enumerate()
    {
        let content = match (&definition.copy_blocks, &partition.source) {
            (Some(CopyBlocks::RootImage), _) => Content::Image,
            (Some(CopyBlocks::RootVerity), _) => Content::HashArea,
            (Some(CopyBlocks::UkiEsp), _) => file_content(esp.image, esp.contents.clone())?,
            (_, Some(path)) => {
                let what = format!("an empty ext4 file system labelled \"{}\"", partition.label);
                file_content(path, what)?
            }
            (_, None) => Content::EmptySlot,
        };
        planned.push(PlannedPartition {
            number: u32::try_from(index + 1).unwrap_or(u32::MAX),
            spec,
            content,
        });
    }
    Ok(Plan {
        partitions: planned,
        disk_guid,
        needed_bytes: disk_bytes,
    })
}

fn stand_in(scratch: &Path, name: &str, bytes: u64) -> Result<PathBuf, PlanError> {
    let path = scratch.join(name);
    File::create(&path)
        .and_then(|file| file.set_len(bytes))
        .map_err(|error| PlanError::Scratch(path.clone(), error))?;
    Ok(path)
}

fn file_content(path: &Path, what: String) -> Result<Content, PlanError> {
    let bytes = std::fs::metadata(path)
        .map_err(|error| PlanError::Scratch(path.to_owned(), error))?
        .len();
    Ok(Content::File {
        path: path.to_owned(),
        bytes,
        what,
    })
}

/// The DPS name of a partition type.
pub fn type_name(guid: Guid) -> String {
    match guid {
        gpt::ESP => "esp".to_owned(),
        gpt::ROOT_X86_64 => "root-x86-64".to_owned(),
        gpt::ROOT_VERITY_X86_64 => "root-x86-64-verity".to_owned(),
        gpt::VAR => "var".to_owned(),
        other => other.to_string(),
    }
}

/// What fills a partition, in words.
fn source_text(content: &Content, image: &RunningImage) -> String {
    match content {
        Content::Image => format!(
            "the running image, {} from {}",
            Size(image.image_bytes),
            image.data_device.display()
        ),
        Content::HashArea => format!(
            "its hash tree, {} from {}",
            Size(image.hash_bytes),
            image.hash_device.display()
        ),
        Content::File { bytes, what, .. } => format!("{what}, {}", Size(*bytes)),
        Content::EmptySlot => "empty slot: first and last MiB zeroed".to_owned(),
    }
}

/// The plan as `--dry-run` prints it: a line for the disk, a header, one line per partition.
pub fn render(plan: &Plan, image: &RunningImage, disk: &Path, disk_bytes: u64) -> Vec<String> {
    let header = [
        "#",
        "type",
        "label",
        "PARTUUID",
        "first LBA",
        "last LBA",
        "size",
        "source",
    ]
    .map(str::to_owned);
    let mut rows = vec![header.to_vec()];
    for partition in &plan.partitions {
        let spec = &partition.spec;
        rows.push(vec![
            partition.number.to_string(),
            type_name(spec.type_guid),
            spec.name.clone(),
            spec.unique_guid.to_string(),
            spec.first_lba.0.to_string(),
            spec.last_lba.0.to_string(),
            Size(partition.bytes()).to_string(),
            source_text(&partition.content, image),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|column| rows.iter().map(|row| row[column].len()).max().unwrap_or(0))
        .collect();
    let mut lines = vec![format!(
        "plan for {} ({}): a GPT of {} partitions, {} in all; disk GUID {}",
        disk.display(),
        Size(disk_bytes),
        plan.partitions.len(),
        Size(plan.needed_bytes),
        plan.disk_guid
    )];
    for row in rows {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            match column + 1 == row.len() {
                true => line.push_str(cell),
                false => line.push_str(&format!("{cell:<width$}  ", width = widths[column])),
            }
        }
        lines.push(line.trim_end().to_owned());
    }
    lines
}

/// Where a write's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The running image's bytes from the data device, checked against its hash tree.
    Image,
    /// The hash area from the hash device.
    HashArea,
    File(PathBuf),
    Zeros,
    Bytes(Vec<u8>),
}

/// One write: `length` bytes at `offset` of the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// What it is, for messages: `partition 2 (xorbang-demo_7)`, `the primary GPT`.
    pub name: String,
    /// What is written, in words.
    pub about: String,
    pub offset: u64,
    pub length: u64,
    pub source: Source,
}

/// The data writes, in the order they are made: slot A's root and hash tree, the ESP, /var,
/// then the empty slots' ends.
pub fn data_writes(plan: &Plan, image: &RunningImage) -> Vec<Write> {
    let rank = |content: &Content| match content {
        Content::Image => 0,
        Content::HashArea => 1,
        Content::File { .. } => 2,
        Content::EmptySlot => 3,
    };
    let mut ordered: Vec<&PlannedPartition> = plan.partitions.iter().collect();
    ordered.sort_by_key(|partition| (rank(&partition.content), partition.number));
    let mut writes = Vec::new();
    for partition in ordered {
        let at = |offset, length, source, about: &str| Write {
            name: partition.name(),
            about: about.to_owned(),
            offset,
            length,
            source,
        };
        let start = partition.offset();
        match &partition.content {
            Content::Image => writes.push(at(
                start,
                image.image_bytes,
                Source::Image,
                "the image, every block checked against the root hash",
            )),
            Content::HashArea => writes.push(at(
                start,
                image.hash_bytes,
                Source::HashArea,
                "its hash tree",
            )),
            Content::File { path, bytes, what } => {
                writes.push(at(start, *bytes, Source::File(path.clone()), what))
            }
            Content::EmptySlot => {
                let edge = MIB.min(partition.bytes());
                let mut head = at(start, edge, Source::Zeros, "zeros");
                head.name = format!("the first MiB of {}", partition.name());
                writes.push(head);
                let tail = start + partition.bytes() - edge;
                if tail > start {
                    let mut end = at(tail, edge, Source::Zeros, "zeros");
                    end.name = format!("the last MiB of {}", partition.name());
                    writes.push(end);
                }
            }
        }
    }
    writes
}

/// The partition table's writes for a disk of `disk_bytes`: the last MiB is zeroed and the
/// backup GPT written at the very end, then the first MiB zeroed and the protective MBR with
/// the primary GPT written, last of all.
pub fn table_writes(plan: &Plan, disk_bytes: u64) -> Result<Vec<Write>, PlanError> {
    let specs: Vec<PartitionSpec> = plan
        .partitions
        .iter()
        .map(|partition| partition.spec.clone())
        .collect();
    let image = gpt::write_gpt(disk_bytes, SectorSize::BYTES_512, plan.disk_guid, &specs).map_err(
        |source| PlanError::Gpt {
            size: disk_bytes,
            source,
        },
    )?;
    let primary_bytes = image.primary.len() as u64;
    let tail_start = disk_bytes.saturating_sub(MIB).max(primary_bytes);
    let write = |name: &str, offset: u64, length: u64, source| Write {
        name: name.to_owned(),
        about: String::new(),
        offset,
        length,
        source,
    };
    Ok(vec![
        write(
            "the end of the disk",
            tail_start,
            image.backup_offset.saturating_sub(tail_start),
            Source::Zeros,
        ),
        write(
            "the backup GPT",
            image.backup_offset,
            image.backup.len() as u64,
            Source::Bytes(image.backup),
        ),
        write(
            "the start of the disk",
            primary_bytes,
            MIB.saturating_sub(primary_bytes),
            Source::Zeros,
        ),
        write(
            "the protective MBR and primary GPT",
            0,
            primary_bytes,
            Source::Bytes(image.primary),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::running::tests::fake_image;

    fn running(dir: &Path, blocks: u64) -> RunningImage {
        RunningImage::read(&fake_image(dir, blocks)).expect("image")
    }

    fn esp_file(dir: &Path, bytes: u64) -> PathBuf {
        let path = dir.join("esp.img");
        File::create(&path)
            .and_then(|file| file.set_len(bytes))
            .expect("esp");
        path
    }

    /// The plan for `image` with an ESP image of `esp_bytes`, scratch files under `dir`.
    fn plan_with_esp(dir: &Path, image: &RunningImage, esp_bytes: u64) -> Plan {
        let esp = esp_file(dir, esp_bytes);
        let scratch = dir.join("scratch");
        std::fs::create_dir(&scratch).expect("scratch");
        let esp = EspFile {
            image: &esp,
            contents: "the ESP".to_owned(),
        };
        plan(image, &esp, &scratch).expect("plan")
    }

    #[test]
    fn the_ab_layout_is_the_build_s_with_the_running_image_in_slot_a() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = running(dir.path(), 300);
        let plan = plan_with_esp(dir.path(), &image, 64 << 20);
        let labels: Vec<&str> = plan
            .partitions
            .iter()
            .map(|p| p.spec.name.as_str())
            .collect();
        assert_eq!(
            labels,
            [
                "esp",
                "xorbang-demo_7",
                "xorbang-demo_7_verity",
                "_empty",
                "_empty",
                "var"
            ]
        );
        let sizes: Vec<u64> = plan.partitions.iter().map(|p| p.bytes() >> 20).collect();
        assert_eq!(sizes, [64, 1024, 16, 1024, 16, 256]);
        assert_eq!(plan.partitions[0].offset(), MIB);
        assert_eq!(plan.needed_bytes, 2402 << 20);
        let (data, hash) = image.root_hash.partition_uuids();
        assert_eq!(plan.partitions[1].spec.unique_guid, data);
        assert_eq!(plan.partitions[2].spec.unique_guid, hash);
        assert_eq!(plan.partitions[1].content, Content::Image);
        assert_eq!(plan.partitions[3].content, Content::EmptySlot);
        assert!(matches!(
            &plan.partitions[5].content,
            Content::File { bytes, .. } if *bytes == 256 << 20
        ));

        let lines = render(&plan, &image, Path::new("/dev/vdb"), 3 << 30);
        assert_eq!(
            lines[0],
            format!(
                "plan for /dev/vdb (3.0 GiB): a GPT of 6 partitions, 2.3 GiB in all; disk GUID {}",
                plan.disk_guid
            )
        );
        assert!(lines[1].starts_with("#  type "), "{}", lines[1]);
        assert!(
            lines[3].starts_with(&format!(
                "2  root-x86-64         xorbang-demo_7         {data}  133120     2230271   1.0 GiB "
            )),
            "{}",
            lines[3]
        );
        assert!(lines[3].ends_with(&format!(
            "1.0 GiB    the running image, 1.1 MiB from {}",
            image.data_device.display()
        )));
        assert!(lines[5].ends_with("empty slot: first and last MiB zeroed"));

        let writes = data_writes(&plan, &image);
        let order: Vec<(&str, u64)> = writes
            .iter()
            .map(|write| (write.name.as_str(), write.length))
            .collect();
        assert_eq!(
            order,
            [
                ("partition 2 (xorbang-demo_7)", 300 * 4096),
                ("partition 3 (xorbang-demo_7_verity)", 5 * 4096),
                ("partition 1 (esp)", 64 << 20),
                ("partition 6 (var)", 256 << 20),
                ("the first MiB of partition 4 (_empty)", MIB),
                ("the last MiB of partition 4 (_empty)", MIB),
                ("the first MiB of partition 5 (_empty)", MIB),
                ("the last MiB of partition 5 (_empty)", MIB),
            ]
        );
        assert_eq!(writes[5].offset + MIB, plan.partitions[4].offset());
    }

    #[test]
    fn an_image_larger_than_the_slot_minimum_grows_both_slots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut image = running(dir.path(), 1);
        // Only the lengths matter to the layout.
        image.image_bytes = (1 << 30) + 5 * MIB + 1;
        let plan = plan_with_esp(dir.path(), &image, 80 << 20);
        let sizes: Vec<u64> = plan.partitions.iter().map(|p| p.bytes() >> 20).collect();
        assert_eq!(sizes, [80, 1030, 16, 1030, 16, 256]);
    }

    #[test]
    fn the_table_goes_at_the_disk_s_real_end() {
        let spec = |first: u64, last: u64| PartitionSpec {
            type_guid: gpt::VAR,
            unique_guid: Guid::from_bytes([1; 16]),
            name: "var".to_owned(),
            first_lba: gpt::Lba(first),
            last_lba: gpt::Lba(last),
            attributes: 0,
        };
        let plan = Plan {
            partitions: vec![PlannedPartition {
                number: 1,
                spec: spec(2048, 4095),
                content: Content::EmptySlot,
            }],
            disk_guid: Guid::from_bytes([2; 16]),
            needed_bytes: 3 * MIB,
        };
        let disk_bytes = 10 * MIB + 4096;
        let writes = table_writes(&plan, disk_bytes).expect("table");
        let spans: Vec<(u64, u64)> = writes.iter().map(|w| (w.offset, w.length)).collect();
        let backup = disk_bytes - 33 * 512;
        assert_eq!(
            spans,
            [
                (disk_bytes - MIB, backup - (disk_bytes - MIB)),
                (backup, 33 * 512),
                (34 * 512, MIB - 34 * 512),
                (0, 34 * 512)
            ]
        );
        assert_eq!(writes[3].name, "the protective MBR and primary GPT");
        let error = table_writes(&plan, 2 * MIB).expect_err("the partition is past the end");
        assert!(matches!(error, PlanError::Gpt { .. }), "{error}");
    }
}
