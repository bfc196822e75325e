//! Which destinations a refund goes to, in order: the first `[[routes]]` entry whose
//! `processor` matches the original sale's processor (`*` matches any, including none).

use serde::Deserialize;

/// One `[[routes]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub processor: String,
    pub destinations: Vec<String>,
}

/// The configured routes, or every destination in name order when none are configured.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// `all` is every configured destination; it becomes the single catch-all route when
    /// `routes` is empty.
    pub fn new(routes: Vec<Route>, mut all: Vec<String>) -> Router {
        if routes.is_empty() {
            all.sort();
            return Router { routes: vec![Route { processor: "*".into(), destinations: all }] };
        }
        Router { routes }
    }

    /// The destinations for a sale's processor, or `None` when no route matches.
    pub fn destinations_for(&self, processor: Option<&str>) -> Option<&[String]> {
        self.routes
            .iter()
            .find(|r| r.processor == "*" || Some(r.processor.as_str()) == processor)
            .map(|r| r.destinations.as_slice())
            .filter(|d| !d.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(p: &str, d: &[&str]) -> Route {
        Route { processor: p.into(), destinations: d.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn first_match_wins_and_star_catches_the_rest() {
        let r = Router::new(
            vec![route("olive", &["olive", "finalpos"]), route("*", &["gateway", "finalpos"])],
            vec![],
        );
        assert_eq!(r.destinations_for(Some("olive")).unwrap(), ["olive", "finalpos"]);
        assert_eq!(r.destinations_for(Some("gateway")).unwrap(), ["gateway", "finalpos"]);
        assert_eq!(r.destinations_for(None).unwrap(), ["gateway", "finalpos"]);
    }

    #[test]
    fn no_catch_all_means_no_route() {
        let r = Router::new(vec![route("olive", &["olive"])], vec![]);
        assert!(r.destinations_for(Some("gateway")).is_none());
    }

    #[test]
    fn without_routes_every_destination_is_used() {
        let r = Router::new(vec![], vec!["zeta".into(), "alpha".into()]);
        assert_eq!(r.destinations_for(None).unwrap(), ["alpha", "zeta"]);
    }
}
