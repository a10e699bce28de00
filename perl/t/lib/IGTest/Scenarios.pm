package IGTest::Scenarios;
# The scenarios of the real-openQA suite (perl/real/*.t): each drives a real openQA web UI only
# through its REST API, the way openQA's scheduler, workers and users do, and asserts what a user
# observes: `incident.done` on the broker, the review and comments on the IBS simulator, openQA's
# answers. Every rule of DESIGN.md section 4 and its traps has one. The same scenarios run against
# every mode (plugin as daemon and prefork, `incident-gate listen`, `incident-gate hook`).
use v5.20;
use warnings;
use feature 'signatures';
no warnings 'experimental::signatures';

use Exporter 'import';
use Digest::SHA qw(sha1_hex);
use Encode ();
use Mojo::JSON qw(decode_json);
use Test::More;
use Time::HiRes qw(time sleep);
use IGTest qw(start_sim unique library);
use IGTest::RealOpenQA;
use IGTest::AMQP;

our @EXPORT_OK = qw(new_world run_scenarios plugin_suite incident_job group);

# How long "nothing more arrives" is watched for. Decisions follow the last job within
# milliseconds on loopback; this only has to outlast a slow CI machine.
use constant QUIET => $ENV{IG_REAL_QUIET} // 2;
# The Gitea repository of the pull requests (SLE 16).
use constant SLFO => 'products/SLFO';

# The IBS and Gitea simulators, a watcher of incident.done on the broker, the names the test uses.
sub new_world (%o) {
    my $prefix = unique();
    my $exchange = "igtest-$prefix";
    my $amqp = IGTest::AMQP->new;
    $amqp->declare_exchange($exchange);
    $amqp->bind_queue($exchange, '#');
    my $self = bless {prefix => $prefix, exchange => $exchange, amqp => $amqp, sim => start_sim('--gitea'),
        base => $o{base} // 20000, messages => [], owner => $$}, __PACKAGE__;
    return $self;
}

sub sim ($self) { $self->{sim} }

# The [incident_gate] section for this world (openQA's URL filled in by the caller).
sub gate_section ($self, $openqa_url, %extra) {
    return {
        amqp_url => $ENV{AMQP_URL} // 'amqp://guest:guest@127.0.0.1:5672/%2f',
        amqp_exchange => $self->{exchange}, amqp_topic_prefix => $self->{prefix},
        obs_url => $self->{sim}{obs}, obs_user => $self->{sim}{obs_user},
        obs_password => $self->{sim}{obs_password}, review_policy => 'accept-onpass',
        gitea_url => $self->{sim}{gitea}, gitea_token => $self->{sim}{gitea_token}, gitea_repo => SLFO,
        (defined $openqa_url ? (openqa_url => $openqa_url) : ()), state_dir => IGTest::tempdir(CLEANUP => 1),
        # the coverage policy of the "testing is finished" scenarios; each its own VERSION so that
        # the other scenarios (15-SP6) are not affected
        coverage => join(', ', 'sle/15-SP7/*-Incidents/x86_64: tests=mau-extratests|qam-minimal|mau-webserver',
            'sle/15-SP8/*-Incidents/x86_64: flavors=Server-DVD-Incidents|Desktop-DVD-Incidents',
            'sle/15-SP9/*-Incidents/x86_64: aggregate',
            'sle/15-SP10/*-Incidents/x86_64: flavors=Server-DVD-Incidents|Desktop-DVD-Incidents'),
        %extra,
    };
}

# Everything published on our exchange so far (openQA's own job.* messages too).
sub _drain ($self, $timeout = 0.2) {
    push @{$self->{messages}}, map { {%$_, json => eval { decode_json($_->{body}) }} } $self->{amqp}->get_all($timeout);
}

sub openqa_messages ($self, $kind) {
    $self->_drain;
    grep { $_->{routing_key} eq "$self->{prefix}.openqa.$kind" } @{$self->{messages}};
}

# The incident.done messages of one incident (of any kind).
sub done_messages ($self, $incident) {
    grep { ($_->{json}{incident} // -1) == $incident } $self->openqa_messages('incident.done');
}

# The incident.done messages of one submission: kind `ibs` (also when absent) or `gitea`.
sub kind_done ($self, $kind, $number) {
    grep { ($_->{json}{kind} // 'ibs') eq $kind } $self->done_messages($number);
}

sub await_kind_done ($self, $kind, $number, $n = 1, $timeout = 30) {
    my $deadline = time + $timeout;
    while (time < $deadline) {
        my @m = $self->kind_done($kind, $number);
        return @m if @m >= $n;
        $self->_drain(0.3);
    }
    return $self->kind_done($kind, $number);
}

sub quiet_kind_done ($self, $kind, $number) {
    my $deadline = time + QUIET;
    $self->_drain(0.3) while time < $deadline;
    return $self->kind_done($kind, $number);
}

# Waits until incident $incident has $n incident.done messages; answers them all.
sub await_done ($self, $incident, $n = 1, $timeout = 30) {
    my $deadline = time + $timeout;
    while (time < $deadline) {
        my @m = $self->done_messages($incident);
        return @m if @m >= $n;
        $self->_drain(0.3);
    }
    return $self->done_messages($incident);
}

# The incident.done messages that arrive within QUIET seconds: for "nothing (more) happens".
sub quiet_done ($self, $incident) {
    my $deadline = time + QUIET;
    $self->_drain(0.3) while time < $deadline;
    return $self->done_messages($incident);
}

# A release request in review for qam-openqa (and, with $also, a second open review that keeps the
# request in review after ours is accepted).
sub release_request ($self, $id, $also = undef) {
    my @reviews = ({by_group => 'qam-openqa', state => 'new'});
    push @reviews, {by_group => $also, state => 'new'} if $also;
    my $ua = $self->{sim}->ua;
    my $res = $ua->put("$self->{sim}{obs}/_sim/requests/$id" =>
          json => {state => 'review', action_type => 'maintenance_release', reviews => \@reviews})->result;
    die "IBS sim: " . $res->code . ' ' . $res->body . "\n" unless $res->is_success;
}

sub ibs ($self, $id) {
    my $res = $self->{sim}->ua->get("$self->{sim}{obs}/_sim/requests/$id")->result;
    die "IBS sim: " . $res->code . ' ' . $res->body . "\n" unless $res->is_success;
    return $res->json;
}

sub review_state ($self, $id) {
    my ($r) = grep { ($_->{by_group} // '') eq 'qam-openqa' } @{$self->ibs($id)->{reviews}};
    return $r ? $r->{state} : 'none';
}

sub ibs_comments ($self, $id) { map { $_->{text} } @{$self->ibs($id)->{comments} // []} }

sub await_review ($self, $id, $state, $timeout = 30) {
    my $deadline = time + $timeout;
    while (time < $deadline) {
        return 1 if $self->review_state($id) eq $state;
        sleep 0.1;
    }
    return $self->review_state($id) eq $state;
}

sub await_comment ($self, $id, $re, $timeout = 30) {
    my $deadline = time + $timeout;
    while (time < $deadline) {
        return 1 if grep { /$re/ } $self->ibs_comments($id);
        sleep 0.1;
    }
    return 0;
}

# The Gitea simulator: pull requests are set up through its control listener, everything else is
# read through Gitea's API as anyone would.
sub gitea_pr ($self, $number, $sha) { $self->_gitea_control(PUT => "/prs/${\SLFO}/$number", $sha) }
sub gitea_push ($self, $number, $sha) { $self->_gitea_control(POST => "/prs/${\SLFO}/$number/push", $sha) }
# The QAM review requested again (SUSE's workflow bot does so after a push, which made it stale).
sub gitea_request_review ($self, $number) {
    $self->_gitea_control(POST => "/prs/${\SLFO}/$number/review_request", undef);
}

sub _gitea_control ($self, $method, $path, $sha) {
    my $res = $self->{sim}->ua->build_tx($method => "$self->{sim}{gitea_control}$path" => json => {sha => $sha});
    $res = $self->{sim}->ua->start($res)->result;
    die "Gitea sim: $method $path: " . $res->code . ' ' . $res->body . "\n" unless $res->is_success;
}

sub gitea ($self, $path) {
    my $res = $self->{sim}->ua->get("$self->{sim}{gitea}/api/v1$path")->result;
    die "Gitea sim: GET $path: " . $res->code . ' ' . $res->body . "\n" unless $res->is_success;
    return $res->json;
}

sub gitea_comments ($self, $number) { @{$self->gitea("/repos/${\SLFO}/issues/$number/comments")} }
sub gitea_reviews ($self, $number) { @{$self->gitea("/repos/${\SLFO}/pulls/$number/reviews")} }

# Our approval comments on pull request $number (the ones SUSE's review bot acts on).
sub gitea_approvals ($self, $number) {
    grep { $_->{body} =~ /^\@qam-openqa-review: approved/ } $self->gitea_comments($number);
}

# Our results comments (identified by their marker line).
sub gitea_results ($self, $number) {
    grep { $_->{body} =~ /<!-- incident-gate-gitea / } $self->gitea_comments($number);
}

# The QAM review of the review bot user: its state and commit.
sub gitea_qam_review ($self, $number) {
    my ($r) = grep { ($_->{user} // {})->{login} && $_->{user}{login} eq 'qam-openqa-review' && !$_->{stale} }
      reverse $self->gitea_reviews($number);
    return $r // {};
}

# The API requests the Gitea simulator answered.
sub gitea_received ($self) {
    my $res = $self->{sim}->ua->get("$self->{sim}{gitea_control}/received")->result;
    die "Gitea sim: GET /received: " . $res->code . "\n" unless $res->is_success;
    return @{$res->json};
}

# Polls $cond until it answers true or $timeout seconds pass; answers its last answer.
sub await ($self, $cond, $timeout = 30) {
    my $deadline = time + $timeout;
    while (time < $deadline) {
        my $v = $cond->();
        return $v if $v;
        sleep 0.1;
    }
    return $cond->();
}

sub DESTROY ($self) {
    return unless $self->{owner} == $$ && $self->{amqp};
    eval { $self->{amqp}->delete_exchange($self->{exchange}) };
}

# ---------------------------------------------------------------------------------------------
# The scenarios. $oq is an IGTest::RealOpenQA; $w the world. Numbers are distinct per scenario.

my %group_ids;

sub group ($oq, $name) { $group_ids{"$oq->{url} $name"} //= $oq->create_group($name) }
sub incidents_group ($oq) { group($oq, 'Maintenance: SLE 15 SP6 Incidents') }

sub incident_job ($oq, $incident, $request, $test, %s) {
    return $oq->create_job(TEST => $test, BUILD => ":$incident:openssl", INCIDENT_ID => $incident,
        RRID => "SUSE:Maintenance:$incident:$request", REPOHASH => "h$request",
        _GROUP_ID => incidents_group($oq), %s);
}

my @SCENARIOS = (
    [
        'all jobs pass, one by one: one incident.done after the last, the review accepted' => sub ($w, $oq, $n) {
            my ($i, $rr) = ($n, 300000 + $n);
            $w->release_request($rr);
            my @jobs = map { incident_job($oq, $i, $rr, $_) } qw(mau-extratests qam-minimal mau-webserver);
            $oq->set_done($_, 'passed') for @jobs[0, 1];
            is scalar $w->quiet_done($i), 0, 'nothing is decided while a job is still scheduled';
            is $w->review_state($rr), 'new', 'the review waits';
            $oq->set_done($jobs[2], 'passed');
            my @m = $w->await_done($i);
            is scalar @m, 1, 'one incident.done' or return;
            is $m[0]{json}{result}, 'passed', 'passed';
            is $m[0]{json}{request}, $rr, 'for the release request';
            is $m[0]{json}{jobs}{total}, 3, 'over the three jobs';
            ok $w->await_review($rr, 'accepted'), 'the qam-openqa review is accepted';
            is scalar $w->quiet_done($i), 1, 'and nothing more is published';
        }
    ],
    [
        'a failure is reported with its job; the restarted job passes and the review is accepted' => sub ($w, $oq, $n) {
            my ($i, $rr) = ($n, 300000 + $n);
            $w->release_request($rr);
            my ($a, $b) = map { incident_job($oq, $i, $rr, $_) } qw(mau-extratests qam-minimal);
            $oq->set_done($b, 'passed');
            $oq->set_done($a, 'failed');
            my @m = $w->await_done($i);
            is scalar @m, 1, 'one incident.done' or return;
            is $m[0]{json}{result}, 'failed', 'failed';
            is_deeply [map { $_->{id} } @{$m[0]{json}{blocking}}], [$a], 'blocked by the failed job';
            is $m[0]{json}{blocking}[0]{url}, "$oq->{url}/tests/$a", 'linked to openQA';
            is $m[0]{json}{blocking}[0]{group}, 'Maintenance: SLE 15 SP6 Incidents', 'with its job group';
            ok $w->await_comment($rr, qr/\b$a\b/), 'IBS gets a comment naming the failed job';
            is $w->review_state($rr), 'new', 'the review is not accepted';
            my $clone = $oq->restart($a);
            is $oq->job($a)->{clone_id}, $clone, 'openQA cloned the failed job';
            is scalar $w->quiet_done($i), 1, 'a restart alone decides nothing';
            $oq->set_done($clone, 'passed');
            @m = $w->await_done($i, 2);
            is scalar @m, 2, 'a second incident.done' or return;
            is $m[1]{json}{result}, 'passed', 'passed once the clone passed';
            ok $w->await_review($rr, 'accepted'), 'the review is accepted';
        }
    ],
    [
        'acceptable_for accepts a failure for one incident; deleting the comment fails it again' => sub ($w, $oq, $n) {
            my ($i, $rr) = ($n, 300000 + $n);
            $w->release_request($rr, 'qam-sle');    # stays in review after our accept
            my ($a) = incident_job($oq, $i, $rr, 'mau-extratests');
            $oq->set_done($a, 'failed');
            my @m = $w->await_done($i);
            is $m[0]{json}{result}, 'failed', 'failed first' or return;
            $oq->comment($a, '@review:acceptable_for:incident_' . ($i + 1) . ':other incident');
            is scalar $w->quiet_done($i), 1, 'an acceptance for another incident changes nothing';
            my $c = $oq->comment($a, "\@review:acceptable_for:incident_$i:known issue bsc#1");
            @m = $w->await_done($i, 2);
            is scalar @m, 2, 'the comment makes a new decision' or return;
            is $m[1]{json}{result}, 'passed', 'passed';
            is $m[1]{json}{jobs}{accepted}, 1, 'with one accepted failure';
            ok $w->await_review($rr, 'accepted'), 'the review is accepted';
            $oq->delete_comment($a, $c);
            @m = $w->await_done($i, 3);
            is scalar @m, 3, 'deleting the comment makes a new decision' or return;
            is $m[2]{json}{result}, 'failed', 'failed again';
            ok $w->await_comment($rr, qr/\b$a\b/), 'IBS is told which job fails';
            ok $w->await_review($rr, 'new'), 'our accept is taken back: the review is open again';
        }
    ],
    [
        'label:force_result overrides a result in openQA, and the verdict follows' => sub ($w, $oq, $n) {
            my ($i, $rr) = ($n, 300000 + $n);
            $w->release_request($rr);
            my ($a) = incident_job($oq, $i, $rr, 'mau-extratests');
            $oq->set_done($a, 'failed');
            my @first = $w->await_done($i);
            is $first[0]{json}{result}, 'failed', 'failed first' or return;
            $oq->comment($a, 'label:force_result:softfailed:bsc#2');
            is $oq->job($a)->{result}, 'softfailed', 'openQA changed the result';
            my @m = $w->await_done($i, 2);
            is scalar @m, 2, 'a new decision' or return;
            is $m[1]{json}{result}, 'passed', 'passed (softfailed)';
            ok $w->await_review($rr, 'accepted'), 'the review is accepted';
        }
    ],
    [
        'a job cancelled while scheduled blocks the incident' => sub ($w, $oq, $n) {
            my ($i, $rr) = ($n, 300000 + $n);
            $w->release_request($rr);
            my ($a, $b) = map { incident_job($oq, $i, $rr, $_) } qw(mau-extratests qam-minimal);
            $oq->set_done($a, 'passed');
            $oq->cancel($b);
            my @m = $w->await_done($i);
            is scalar @m, 1, 'one incident.done' or return;
            is $m[0]{json}{result}, 'failed', 'failed';
            is_deeply [map { [$_->{id}, $_->{result}] } @{$m[0]{json}{blocking}}], [[$b, 'user_cancelled']],
              'blocked by the cancelled job';
            is $w->review_state($rr), 'new', 'the review is not accepted';
        }
    ],
    [
        'jobs of an older release request never count' => sub ($w, $oq, $n) {
            my ($i, $old, $rr) = ($n, 300000 + $n, 300500 + $n);
            $w->release_request($old);
            $w->release_request($rr);
            my ($x) = incident_job($oq, $i, $old, 'mau-extratests');
            $oq->set_done($x, 'failed');
            my @m = $w->await_done($i);
            is $m[0]{json}{request}, $old, 'the older request was decided first' or return;
            my ($a) = incident_job($oq, $i, $rr, 'mau-extratests');
            $oq->set_done($a, 'passed');
            @m = $w->await_done($i, 2);
            is scalar @m, 2, 'the newer request is decided' or return;
            is $m[1]{json}{request}, $rr, 'for the newer request';
            is $m[1]{json}{result}, 'passed', 'passed: the older failure does not count';
            is $m[1]{json}{jobs}{total}, 1, 'over its own job only';
            ok $w->await_review($rr, 'accepted'), 'its review is accepted';
        }
    ],
    [
        'jobs in ignored groups never count' => sub ($w, $oq, $n) {
            my ($i, $rr) = ($n, 300000 + $n);
            $w->release_request($rr);
            my $devel = group($oq, 'Maintenance: SLE 15 SP6 Devel');
            my ($d) = incident_job($oq, $i, $rr, 'mau-experimental', _GROUP_ID => $devel);
            my ($a) = incident_job($oq, $i, $rr, 'mau-extratests');
            $oq->set_done($d, 'failed');
            $oq->set_done($a, 'passed');
            my @m = $w->await_done($i);
            is scalar @m, 1, 'one incident.done' or return;
            is $m[0]{json}{result}, 'passed', 'passed: the Devel failure does not count';
            is $m[0]{json}{jobs}{total}, 1, 'over the one job that counts';
            ok $w->await_review($rr, 'accepted'), 'the review is accepted';
        }
    ],
    [
        'the newest job of a scenario wins; aggregates count from their newest build' => sub ($w, $oq, $n) {
            my ($i, $rr) = ($n, 300000 + $n);
            $w->release_request($rr);
            my $updates = group($oq, 'Maintenance: SLE 15 SP6 Updates');
            my %agg = (FLAVOR => 'Server-DVD-Updates', SLES_TEST_ISSUES => join(',', $i - 1, $i, $i + 1),
                _GROUP_ID => $updates);
            my $old_agg = $oq->create_job(TEST => 'mau-aggregate', BUILD => '20261128-1', %agg);
            $oq->set_done($old_agg, 'failed');
            # the failed aggregate alone may already be reported (failed, not complete): wait for the
            # decision over the incident's own job too
            my ($first) = incident_job($oq, $i, $rr, 'mau-extratests');
            $oq->set_done($first, 'failed');
            my @m = $w->await_done($i);
            @m = $w->await_done($i, 2) if @m && !$m[-1]{json}{complete};
            ok @m && $m[-1]{json}{complete}, 'testing of the first build finished' or return;
            is $m[-1]{json}{result}, 'failed', 'failed on the first build' or return;
            my $seen = @m;
            # openQA schedules the same scenario again (not a restart): the newer job replaces it
            my ($again) = incident_job($oq, $i, $rr, 'mau-extratests');
            my $new_agg = $oq->create_job(TEST => 'mau-aggregate', BUILD => '20261129-1', %agg);
            $oq->set_done($again, 'passed');
            $oq->set_done($new_agg, 'passed');
            @m = $w->await_done($i, $seen + 1);
            ok @m > $seen, 'a new decision' or return;
            is $m[-1]{json}{result}, 'passed', 'passed: the older job and the older build do not count'
              or diag explain [map { $_->{json} } @m];
            is $m[-1]{json}{jobs}{total}, 2, 'over the newer incident job and the newer aggregate';
            ok $w->await_review($rr, 'accepted'), 'the review is accepted';
        }
    ],
    [
        'testing finished: jobs created one at a time wait for the tests the policy names' => sub ($w, $oq, $n) {
            my ($i, $rr) = ($n, 300000 + $n);
            $w->release_request($rr);
            for my $test (qw(mau-extratests qam-minimal)) {
                my $j = incident_job($oq, $i, $rr, $test, VERSION => '15-SP7');
                $oq->set_done($j, 'passed');
                is scalar $w->quiet_done($i), 0, "after $test alone: no incident.done, testing is not finished";
                is $w->review_state($rr), 'new', 'no premature accept';
            }
            my $last = incident_job($oq, $i, $rr, 'mau-webserver', VERSION => '15-SP7');
            $oq->set_done($last, 'passed');
            my @m = $w->await_done($i);
            is scalar @m, 1, 'one incident.done once the last test exists and passed' or return;
            is $m[0]{json}{result}, 'passed', 'passed';
            ok $m[0]{json}{complete}, 'marked complete';
            is $m[0]{json}{jobs}{total}, 3, 'over the three jobs';
            ok $w->await_review($rr, 'accepted'), 'accepted once';
            is scalar $w->quiet_done($i), 1, 'exactly one incident.done for the request';
        }
    ],
    [
        'testing finished: a second flavor posted after the first finished' => sub ($w, $oq, $n) {
            my ($i, $rr) = ($n, 300000 + $n);
            $w->release_request($rr);
            my @server = map { incident_job($oq, $i, $rr, $_, VERSION => '15-SP8') } qw(mau-extratests qam-minimal);
            $oq->set_done($_, 'passed') for @server;
            is scalar $w->quiet_done($i), 0, 'Server passed alone: nothing published';
            is $w->review_state($rr), 'new', 'no premature accept';
            my $desktop = incident_job($oq, $i, $rr, 'qam-gnome', VERSION => '15-SP8', FLAVOR => 'Desktop-DVD-Incidents');
            $oq->set_done($desktop, 'passed');
            my @m = $w->await_done($i);
            is scalar @m, 1, 'one incident.done with both flavors' or return;
            is $m[0]{json}{result}, 'passed', 'passed';
            is $m[0]{json}{jobs}{total}, 3, 'over both flavors';
            ok $w->await_review($rr, 'accepted'), 'accepted';
            is scalar $w->quiet_done($i), 1, 'exactly one incident.done';
        }
    ],
    [
        'testing finished: an aggregate build appearing after the own jobs passed fails the incident' => sub ($w, $oq, $n) {
            my ($i, $rr) = ($n, 300000 + $n);
            $w->release_request($rr);
            my $own = incident_job($oq, $i, $rr, 'mau-extratests', VERSION => '15-SP9');
            $oq->set_done($own, 'passed');
            is scalar $w->quiet_done($i), 0, 'own jobs passed, no aggregate yet: nothing published';
            is $w->review_state($rr), 'new', 'no premature accept';
            my $updates = group($oq, 'Maintenance: SLE 15 SP9 Updates');
            my $agg = $oq->create_job(TEST => 'mau-aggregate', VERSION => '15-SP9', BUILD => '20261129-1',
                FLAVOR => 'Server-DVD-Updates', SLES_TEST_ISSUES => $i, _GROUP_ID => $updates);
            $oq->set_done($agg, 'failed');
            my @m = $w->await_done($i);
            is scalar @m, 1, 'one incident.done' or return;
            is $m[0]{json}{result}, 'failed', 'failed by the aggregate job';
            ok $m[0]{json}{complete}, 'testing is finished';
            is_deeply [map { $_->{id} } @{$m[0]{json}{blocking}}], [$agg], 'blocked by the aggregate';
            ok $w->await_comment($rr, qr/\b$agg\b/), 'IBS gets a comment naming it';
            is $w->review_state($rr), 'new', 'never accepted';
            is scalar $w->quiet_done($i), 1, 'exactly one incident.done';
        }
    ],
    [
        'testing finished: an incident listed only by an aggregate is never passed' => sub ($w, $oq, $n) {
            my ($i, $rr) = ($n, 300000 + $n);
            $w->release_request($rr);
            my $updates = group($oq, 'Maintenance: SLE 15 SP6 Updates');
            my $agg = $oq->create_job(TEST => 'mau-aggregate', BUILD => '20261129-2', FLAVOR => 'Server-DVD-Updates',
                SLES_TEST_ISSUES => $i, _GROUP_ID => $updates);
            $oq->set_done($agg, 'passed');
            is scalar $w->quiet_done($i), 0, 'no incident.done: no job of its own';
            is $w->review_state($rr), 'new', 'the review is not accepted';
            # the plugin's incident route (absent in the listen and hook modes)
            if (my $v = eval { $oq->api(GET => "/api/v1/incident_gate/incidents/$i") }) {
                is $v->{result}, 'pending', 'the plugin route says pending';
                like $v->{waiting}[0]{what}, qr/a job of incident ${i}'s own/, 'and names what is missing';
            }
        }
    ],
);

# Issue 12 with openQA's own scheduling: a machine, test suites, one product per flavor and job
# templates, so that `POST /api/v1/isos` creates the jobs (and emits openqa_iso_create and one
# openqa_job_create per job) as openQA's maintenance scheduling does.
my %iso_ids;

sub iso_templates ($oq, $version, $group_name, %flavors) {
    my $group = group($oq, $group_name);
    my $machine = $iso_ids{"$oq->{url} machine"} //= $oq->create_machine('64bit', QEMUCPU => 'qemu64');
    for my $flavor (sort keys %flavors) {
        my $product = $oq->create_product(distri => 'sle', version => $version, flavor => $flavor, arch => 'x86_64');
        for my $test (@{$flavors{$flavor}}) {
            my $suite = $iso_ids{"$oq->{url} suite $test"} //= $oq->create_test_suite($test);
            $oq->create_job_template(group_id => $group, machine_id => $machine, test_suite_id => $suite,
                product_id => $product);
        }
    }
}

# The settings of a maintenance scheduled product of incident $i, request $rr.
sub iso_settings ($i, $rr, $version, $flavor, %more) {
    return (DISTRI => 'sle', VERSION => $version, FLAVOR => $flavor, ARCH => 'x86_64', BUILD => ":$i:openssl",
        INCIDENT_ID => $i, RRID => "SUSE:Maintenance:$i:$rr", REPOHASH => "h$rr", %more);
}

sub job_settings ($oq, $id) { $oq->job($id)->{settings} }

my @ISO_SCENARIOS = (
    [
        'testing finished: a second flavor\'s scheduled product (POST /api/v1/isos) posted after the first finished'
          => sub ($w, $oq, $n) {
            my ($i, $rr) = ($n, 300000 + $n);
            $w->release_request($rr);
            iso_templates($oq, '15-SP10', 'Maintenance: SLE 15 SP10 Incidents',
                'Server-DVD-Incidents' => [qw(mau-extratests qam-minimal)],
                'Desktop-DVD-Incidents' => ['qam-gnome']);
            my $server = $oq->post_iso(iso_settings($i, $rr, '15-SP10', 'Server-DVD-Incidents'));
            is $server->{count}, 2, 'openQA created the Server jobs from its job templates' or diag explain $server;
            my @server = @{$server->{ids}};
            my $s = job_settings($oq, $server[0]);
            is_deeply [@$s{qw(INCIDENT_ID RRID TEST MACHINE)}], [$i, "SUSE:Maintenance:$i:$rr", $s->{TEST}, '64bit'],
              'the product\'s settings are in the jobs (INCIDENT_ID, RRID)';
            my $sp = $oq->scheduled_product($server->{scheduled_product_id});
            is $sp->{status}, 'scheduled', 'the scheduled product is scheduled';
            is_deeply [sort @{$sp->{job_ids}}], [sort @server], 'with its jobs';
            $oq->set_done($_, 'passed') for @server;
            is scalar $w->quiet_done($i), 0, 'Server passed alone: nothing published';
            is $w->review_state($rr), 'new', 'no premature accept';
            my $v = $oq->api(GET => "/api/v1/incident_gate/incidents/$i");
            is $v->{result}, 'pending', 'the plugin route says pending';
            ok((grep { $_->{kind} eq 'coverage' && $_->{what} =~ /Desktop-DVD-Incidents/ } @{$v->{waiting} // []}),
                'waiting for the Desktop flavor') or diag explain $v->{waiting};
            my $desktop = $oq->post_iso(iso_settings($i, $rr, '15-SP10', 'Desktop-DVD-Incidents'));
            is $desktop->{count}, 1, 'the Desktop product created its job';
            is scalar $w->quiet_done($i), 0, 'while the Desktop job is scheduled: nothing published';
            is $w->review_state($rr), 'new', 'no premature accept';
            $oq->set_done($desktop->{ids}[0], 'passed');
            my @m = $w->await_done($i);
            is scalar @m, 1, 'one incident.done with both flavors' or return;
            is $m[0]{json}{result}, 'passed', 'passed';
            ok $m[0]{json}{complete}, 'complete';
            is $m[0]{json}{jobs}{total}, 3, 'over both products\' jobs';
            ok $w->await_review($rr, 'accepted'), 'accepted';
            is scalar $w->quiet_done($i), 1, 'exactly one incident.done';
        }
    ],
    [
        'testing finished: a scheduled product still waiting for the GRU holds the decision back' => sub ($w, $oq, $n) {
            # no coverage policy for this VERSION: only the scheduled product tells that more comes
            my ($i, $rr) = ($n, 300000 + $n);
            $w->release_request($rr);
            iso_templates($oq, '15-SP11', 'Maintenance: SLE 15 SP11 Incidents',
                'Server-DVD-Incidents' => ['mau-extratests'], 'Desktop-DVD-Incidents' => ['qam-gnome']);
            my $server = $oq->post_iso(iso_settings($i, $rr, '15-SP11', 'Server-DVD-Incidents'));
            is $server->{count}, 1, 'the Server job is created within the request';
            my $async = $oq->post_iso(iso_settings($i, $rr, '15-SP11', 'Desktop-DVD-Incidents'), async => 1);
            ok $async->{minion_job_id}, 'the Desktop product is left to the GRU' or diag explain $async;
            my $sp_id = $async->{scheduled_product_id};
            is $oq->scheduled_product($sp_id)->{status}, 'added', 'which has not run yet';
            $oq->set_done($server->{ids}[0], 'passed');
            is scalar $w->quiet_done($i), 0, 'the Server job passed: nothing published';
            is $w->review_state($rr), 'new', 'no premature accept';
            my $v = $oq->api(GET => "/api/v1/incident_gate/incidents/$i");
            is $v->{result}, 'pending', 'the plugin route says pending';
            ok((grep { $_->{kind} eq 'scheduling' } @{$v->{waiting} // []}), 'waiting for the scheduled product')
              or diag explain $v;
            $oq->run_gru_once;
            my $sp = $oq->scheduled_product($sp_id);
            is $sp->{status}, 'scheduled', 'the GRU scheduled the Desktop product';
            is scalar @{$sp->{job_ids} // []}, 1, 'one job';
            is scalar $w->quiet_done($i), 0, 'its job is scheduled: nothing published';
            $oq->set_done($sp->{job_ids}[0], 'passed');
            my @m = $w->await_done($i);
            is scalar @m, 1, 'one incident.done' or return;
            is $m[0]{json}{result}, 'passed', 'passed';
            ok $m[0]{json}{complete}, 'complete';
            is $m[0]{json}{jobs}{total}, 2, 'over both products\' jobs';
            ok $w->await_review($rr, 'accepted'), 'accepted';
            is scalar $w->quiet_done($i), 1, 'exactly one incident.done';
        }
    ],
);

# Issue 14: Gitea pull requests (SLE 16 / SLFO) through the real openQA, reported to the Gitea
# simulator. Jobs carry what qem-bot's gitea-trigger sets.
sub gitea_job ($oq, $pr, $sha, $test, %s) {
    return $oq->create_job(VERSION => '16.0', FLAVOR => 'Online-Increments', TEST => $test,
        BUILD => ":git:$pr:kernel-default", INCIDENT_ID => $pr, SUBMISSION_ID => "git:$pr", _GITEA_PR => $pr,
        GITEA_REPO => SLFO, GITEA_SHA => $sha, _GROUP_ID => group($oq, 'SLFO Pull Requests'), %s);
}

sub sha ($n, $what) { sha1_hex("$n $what") }

my @GITEA_SCENARIOS = (
    [
        'Gitea: a passing pull request is approved once for its tested head' => sub ($w, $oq, $n) {
            my ($pr, $sha) = ($n, sha($n, 'head'));
            $w->gitea_pr($pr, $sha);
            my ($a, $b) = map { gitea_job($oq, $pr, $sha, $_) } qw(kernel-ltp qam-minimal);
            $oq->set_done($a, 'passed');
            is scalar $w->quiet_kind_done(gitea => $pr), 0, 'nothing while a job is scheduled';
            $oq->set_done($b, 'passed');
            my @m = $w->await_kind_done(gitea => $pr);
            is scalar @m, 1, 'one incident.done of kind gitea'
              or return diag explain $oq->api(GET => "/api/v1/incident_gate/submissions/git:$pr"), [grep { /IncidentGate/ } $oq->log_lines];
            is $m[0]{json}{result}, 'passed', 'passed';
            ok $m[0]{json}{complete}, 'complete';
            is_deeply $m[0]{json}{gitea}, {repo => SLFO, pr => $pr, sha => $sha}, 'for the tested commit';
            is $m[0]{json}{request}, undef, 'no release request';
            is $m[0]{json}{jobs}{total}, 2, 'over its two jobs';
            ok $w->await(sub { $w->gitea_approvals($pr) }), 'an approval comment on the pull request';
            my @ap = $w->gitea_approvals($pr);
            like $ap[0]{body}, qr/^Tested commit: $sha$/m, 'naming the tested commit';
            is $ap[0]{user}{login}, $w->{sim}{gitea_user}, 'by our account';
            my $review = $w->gitea_qam_review($pr);
            is_deeply [@$review{qw(state commit_id)}], ['APPROVED', $sha], "the review bot approved the head";
            is scalar $w->kind_done(ibs => $pr), 0, 'nothing about an IBS incident of that number';
            my $v = $oq->api(GET => "/api/v1/incident_gate/submissions/git:$pr");
            is $v->{result}, 'passed', 'the plugin route for git:<pr> says passed';
            # a second evaluation: the job restarted and passing again is a new decision (another
            # set of jobs), and the head is approved already
            my $clone = $oq->restart($a);
            $oq->set_done($clone, 'passed');
            @m = $w->await_kind_done(gitea => $pr, 2);
            is scalar @m, 2, 'the new set of jobs is a second decision' or return;
            is $m[1]{json}{result}, 'passed', 'passed again';
            is scalar $w->quiet_kind_done(gitea => $pr), 2, 'and nothing more';
            is scalar(my @again = $w->gitea_approvals($pr)), 1, 'still exactly one approval comment';
            is scalar $w->gitea_results($pr), 0, 'and no results comment';
        }
    ],
    [
        'Gitea: a failure is one results comment, edited in place as the results change' => sub ($w, $oq, $n) {
            my ($pr, $sha) = ($n, sha($n, 'head'));
            $w->gitea_pr($pr, $sha);
            my ($a, $b) = map { gitea_job($oq, $pr, $sha, $_) } qw(kernel-ltp qam-minimal);
            $oq->set_done($b, 'passed');
            $oq->set_done($a, 'failed');
            my @m = $w->await_kind_done(gitea => $pr);
            is scalar @m, 1, 'one incident.done' or return;
            is $m[0]{json}{result}, 'failed', 'failed';
            is_deeply [map { $_->{id} } @{$m[0]{json}{blocking}}], [$a], 'blocked by the failed job';
            ok $w->await(sub { grep { $_->{body} =~ m{/tests/$a\b} } $w->gitea_results($pr) }),
              'a results comment names the failed job';
            my @c = $w->gitea_results($pr);
            is scalar @c, 1, 'one results comment' or return;
            my $id = $c[0]{id};
            like $c[0]{body}, qr/state=failed/, 'marked failed';
            is scalar $w->gitea_approvals($pr), 0, 'no approval';
            my $clone = $oq->restart($a);
            $oq->set_done($clone, 'failed');
            @m = $w->await_kind_done(gitea => $pr, 2);
            is scalar @m, 2, 'the clone failing is a new decision' or return;
            is_deeply [map { $_->{id} } @{$m[1]{json}{blocking}}], [$clone], 'blocked by the clone';
            ok $w->await(sub { grep { $_->{body} =~ m{/tests/$clone\b} } $w->gitea_results($pr) }),
              'the results comment names the clone';
            @c = $w->gitea_results($pr);
            is_deeply [map { $_->{id} } @c], [$id], 'still one results comment, the same one';
            unlike $c[0]{body}, qr{/tests/$a\b}, 'no longer naming the replaced job';
            ok((grep { $_->{method} eq 'PATCH' && $_->{path} eq "/repos/${\SLFO}/issues/comments/$id" }
                $w->gitea_received), 'edited with PATCH');
            my $third = $oq->restart($clone);
            $oq->set_done($third, 'passed');
            @m = $w->await_kind_done(gitea => $pr, 3);
            is $m[2]{json}{result}, 'passed', 'passed once the job passes' or return;
            ok $w->await(sub { $w->gitea_approvals($pr) }), 'approved';
            ok $w->await(sub { grep { $_->{body} =~ /state=passed/ } $w->gitea_results($pr) }),
              'the results comment now says passed';
            is_deeply [map { $_->{id} } $w->gitea_results($pr)], [$id], 'still the same single comment';
            is scalar $w->gitea_approvals($pr), 1, 'one approval';
        }
    ],
    [
        'Gitea: a push before the results are in: not approved, the comment says they are for an older commit' => sub ($w, $oq, $n) {
            my ($pr, $old, $new) = ($n, sha($n, 'first'), sha($n, 'second'));
            $w->gitea_pr($pr, $old);
            my ($a) = gitea_job($oq, $pr, $old, 'kernel-ltp');
            $w->gitea_push($pr, $new);
            $oq->set_done($a, 'passed');
            my @m = $w->await_kind_done(gitea => $pr);
            is scalar @m, 1, 'one incident.done' or return;
            is $m[0]{json}{result}, 'passed', 'the old commit passed';
            is $m[0]{json}{gitea}{sha}, $old, 'for the old commit';
            ok $w->await(sub { grep { $_->{body} =~ /results are for an older commit/ } $w->gitea_results($pr) }),
              'a results comment says the results are for an older commit';
            is scalar $w->gitea_approvals($pr), 0, 'no approval';
            ok !(grep { $_->{state} eq 'APPROVED' } $w->gitea_reviews($pr)), 'no approving review';
            # the push made the review request stale, as on Gitea; the workflow bot asks again
            $w->gitea_request_review($pr);
            is $w->gitea_qam_review($pr)->{state}, 'REQUEST_REVIEW', 'the QAM review is requested again';
            # openQA tests the new head
            my ($b) = gitea_job($oq, $pr, $new, 'kernel-ltp');
            $oq->set_done($b, 'passed');
            @m = $w->await_kind_done(gitea => $pr, 2);
            is scalar @m, 2, 'the new commit is decided' or return;
            is_deeply [$m[1]{json}{gitea}{sha}, $m[1]{json}{result}, $m[1]{json}{jobs}{total}], [$new, 'passed', 1],
              'passed on its own job';
            ok $w->await(sub { $w->gitea_approvals($pr) }), 'approved';
            my @ap = $w->gitea_approvals($pr);
            is scalar @ap, 1, 'once';
            like $ap[0]{body}, qr/^Tested commit: $new$/m, 'for the new head';
            is_deeply [@{$w->gitea_qam_review($pr)}{qw(state commit_id)}], ['APPROVED', $new], 'the review bot approved it';
        }
    ],
    [
        'an IBS incident and a Gitea pull request with the same number are decided independently' => sub ($w, $oq, $n) {
            my ($i, $rr, $sha) = ($n, 300000 + $n, sha($n, 'head'));
            $w->release_request($rr);
            $w->gitea_pr($i, $sha);
            my ($ibs) = incident_job($oq, $i, $rr, 'mau-extratests');
            my ($git) = gitea_job($oq, $i, $sha, 'kernel-ltp');
            $oq->set_done($git, 'passed');
            $oq->set_done($ibs, 'failed');
            my @ibs = $w->await_kind_done(ibs => $i);
            my @git = $w->await_kind_done(gitea => $i);
            is scalar @ibs, 1, 'one incident.done for the IBS incident' or return;
            is scalar @git, 1, 'one for the pull request' or return;
            is_deeply [$ibs[0]{json}{result}, $ibs[0]{json}{request}, $ibs[0]{json}{jobs}{total}], ['failed', $rr, 1],
              'the incident failed on its own job';
            is_deeply [map { $_->{id} } @{$ibs[0]{json}{blocking}}], [$ibs], 'blocked by the IBS job only';
            is_deeply [$git[0]{json}{result}, $git[0]{json}{jobs}{total}], ['passed', 1], 'the pull request passed on its own';
            ok $w->await_comment($rr, qr/\b$ibs\b/), 'IBS gets a comment naming the failed job';
            is $w->review_state($rr), 'new', 'the IBS review is not accepted';
            ok $w->await(sub { $w->gitea_approvals($i) }), 'the pull request is approved';
            is scalar $w->gitea_results($i), 0, 'with no failure comment on it';
            is scalar $w->quiet_done($i), 2, 'nothing more for either';
        }
    ],
);

# The plugin inside a real openQA web UI (`openqa daemon`, or prefork with $workers workers): every
# scenario, decided from openQA's own in-process events.
sub plugin_suite (%o) {
    my $w = new_world(base => $o{base});
    # openQA shows scheduled products (GET /api/v1/isos/<id>) to operators only: the plugin signs
    # with the key of Fake auth's admin, as a deployment configures an operator's key
    my %key = (openqa_api_key => IGTest::RealOpenQA::API_KEY, openqa_api_secret => IGTest::RealOpenQA::API_SECRET);
    my $oq = IGTest::RealOpenQA->start(workers => $o{workers}, plugin => 1, exchange => $w->{exchange},
        prefix => $w->{prefix}, ini => {incident_gate => {library => library(), %{$w->gate_section(undef, %key)}}});
    ok((grep { /IncidentGate: libincident_gate/ } $oq->log_lines), 'openQA loaded the plugin')
      or diag join "\n", $oq->log_lines;
    my %before = metrics($oq);
    # openQA's own scheduling (openqa_iso_create is heard in-process only) and Gitea pull requests
    run_scenarios($w, $oq, more => [@ISO_SCENARIOS, @GITEA_SCENARIOS]);
    subtest 'metrics for telegraf beside openQA\'s own, moved by the decisions' => sub {
        my $res = $oq->ua->get($oq->url . '/admin/influxdb/incident_gate')->result;
        is $res->code, 200, 'public, as /admin/influxdb/jobs';
        like $res->headers->content_type, qr{^text/plain}, 'as text';
        my %after = metrics($oq);
        ok keys %after, 'incident_gate lines' or diag $res->body;
        my $decisions = sub ($m) { my $n = 0; $n += $m->{$_}{decisions} // 0 for keys %$m; $n };
        cmp_ok $decisions->(\%after), '>', $decisions->(\%before), 'more decisions than before the scenarios';
        cmp_ok $after{''}{evaluations}, '>', $before{''}{evaluations}, 'more evaluations';
        ok defined $after{''}{latency_p99_s}, 'a decision latency';
        is $after{'sink=amqp'}{backlog}, 0, 'every event published';
    };
    subtest "openQA's log reads as written: no mojibake, no Rust debug output" => sub {
        my @ours = grep { /IncidentGate/ } map { Encode::decode('UTF-8', $_) } $oq->log_lines;
        ok((grep { /IncidentGate: incident \d+ \x{2192} amqp: / } @ours), 'arrows as arrows') or diag join "\n", @ours;
        # UTF-8 encoded twice shows as a Latin-1 letter followed by C1 control characters
        is_deeply [grep { /[\x{c2}-\x{f4}][\x{80}-\x{bf}]/ } @ours], [], 'no line encoded twice';
        is_deeply [grep { /Some\(|\bNone\b|request null/ } @ours], [], 'no Some(…), None or null';
        ok((grep { /IncidentGate: pull request git:\d+: (passed|failed) \(\d+ jobs/ } @ours), 'a pull request named so')
          or diag join "\n", @ours;
    };
    subtest "decisions public, internals for operators, the library's log in openQA's" => sub {
        my $public = $oq->ua->get($oq->url . '/api/v1/incident_gate/status')->result;
        is $public->code, 200, 'the status answers anyone';
        ok @{$public->json->{recent_decisions} // []}, 'with the decisions';
        unlike $public->body, qr/config|intake|deliveries|\Q$w->{exchange}\E/, 'and nothing of the configuration';
        my $anonymous = $oq->ua->get($oq->url . '/api/v1/incident_gate/internals')->result;
        is $anonymous->code, 403, "internals need openQA's API authentication";
        my $operator = $oq->request(GET => '/api/v1/incident_gate/internals');
        is $operator->code, 200, 'which an operator has';
        is $operator->json->{config}{amqp_exchange}, $w->{exchange}, 'and sees the configuration';
        ok((grep { /\[info\].*IncidentGate: (incident \d+|pull request git:\d+): (passed|failed)/ } $oq->log_lines),
            "the engine's decisions are in openQA's log") or diag join "\n", $oq->log_lines;
    };
    is_deeply [$oq->alarming_lines], [], 'openQA logged no errors';
}

# The plugin's metrics route as {tags => {field => value}} (tags without url, '' for none); every
# line must be incident_gate line protocol with integer fields (tests/metrics.rs parses strictly).
sub metrics ($oq) {
    my $body = $oq->ua->get($oq->url . '/admin/influxdb/incident_gate')->result->body;
    my %m;
    for my $line (split /\n/, $body) {
        my ($tags, $fields) = $line =~ /^incident_gate,url=(?:[^\\ ,]|\\.)+((?:,\w+=\w+)*) ((?:\w+=-?\d+i,?)+)$/
          or do { fail "not an incident_gate line: $line"; next };
        $m{$tags =~ s/^,//r} = {map { /^(\w+)=(-?\d+)i$/ } split /,/, $fields};
    }
    return %m;
}

# Runs every scenario (and those of `more`) as a subtest, numbering incidents from the world's
# base. $IG_REAL_ONLY (a regex) runs only the scenarios it matches, for working on them.
sub run_scenarios ($w, $oq, %o) {
    my $n = $w->{base};
    for my $s (@SCENARIOS, @{$o{more} // []}) {
        my ($name, $code) = @$s;
        $n += 10;
        next if $o{skip} && $name =~ $o{skip};
        next if $ENV{IG_REAL_ONLY} && $name !~ /$ENV{IG_REAL_ONLY}/;
        subtest $name => sub { $code->($w, $oq, $n) };
    }
}

1;
