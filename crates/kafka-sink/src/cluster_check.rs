//! What `KafkaSink::check` reports: the brokers and, per topic asked about, whether it
//! exists and how many partitions it has.

use rdkafka::error::RDKafkaErrorCode;
use rdkafka::metadata::Metadata;

/// A broker as named in the cluster metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerInfo {
    pub id: i32,
    pub host: String,
    pub port: i32,
}

/// What the cluster metadata says about one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicCheck {
    pub name: String,
    pub exists: bool,
    /// 0 when the topic does not exist.
    pub partitions: usize,
    /// A topic-level error the metadata reported (e.g. leader not available).
    pub error: Option<String>,
}

/// The answer of [`KafkaSink::check`](crate::KafkaSink::check).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterCheck {
    /// The brokers of the cluster (non-empty: the request got an answer).
    pub brokers: Vec<BrokerInfo>,
    /// The topics asked about, in the order given, then the dead-letter topic.
    pub topics: Vec<TopicCheck>,
    /// Every topic the cluster has (names), for reports on routed topics.
    pub all_topics: Vec<String>,
}

impl ClusterCheck {
    /// The topics that do not exist (whether the broker would auto-create them is not
    /// known to a client).
    pub fn missing_topics(&self) -> Vec<&str> {
        self.topics
            .iter()
            .filter(|t| !t.exists)
            .map(|t| t.name.as_str())
            .collect()
    }

    pub(crate) fn from_metadata(md: &Metadata, wanted: &[String]) -> ClusterCheck {
        let all_topics = md.topics().iter().map(|t| t.name().to_owned()).collect();
        let brokers = md
            .brokers()
            .iter()
            .map(|b| BrokerInfo {
                id: b.id(),
                host: b.host().to_owned(),
                port: b.port(),
            })
            .collect();
        let topics = wanted
            .iter()
            .map(|name| {
                let found = md.topics().iter().find(|t| t.name() == name.as_str());
                match found {
                    None => TopicCheck {
                        name: name.clone(),
                        exists: false,
                        partitions: 0,
                        error: None,
                    },
                    Some(t) => {
                        let code = t.error().map(RDKafkaErrorCode::from);
                        let missing = matches!(
                            code,
                            Some(
                                RDKafkaErrorCode::UnknownTopicOrPartition
                                    | RDKafkaErrorCode::UnknownTopic
                            )
                        );
                        TopicCheck {
                            name: name.clone(),
                            exists: !missing,
                            partitions: if missing { 0 } else { t.partitions().len() },
                            error: code.map(|c| c.to_string()),
                        }
                    }
                }
            })
            .collect();
        ClusterCheck {
            brokers,
            topics,
            all_topics,
        }
    }
}
