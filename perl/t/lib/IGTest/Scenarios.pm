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
use Mojo::JSON qw(decode_json);
use Test::More;
use Time::HiRes qw(time sleep);
use IGTest qw(start_sim unique library);
use IGTest::RealOpenQA;
use IGTest::AMQP;

our @EXPORT_OK = qw(new_world run_scenarios plugin_suite);

# How long "nothing more arrives" is watched for. Decisions follow the last job within
# milliseconds on loopback; this only has to outlast a slow CI machine.
use constant QUIET => $ENV{IG_REAL_QUIET} // 2;

# The IBS simulator, a watcher of incident.done on the broker, the names the test uses.
sub new_world (%o) {
    my $prefix = unique();
    my $exchange = "igtest-$prefix";
    my $amqp = IGTest::AMQP->new;
    $amqp->declare_exchange($exchange);
    $amqp->bind_queue($exchange, '#');
    my $self = bless {prefix => $prefix, exchange => $exchange, amqp => $amqp, sim => start_sim(),
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
        (defined $openqa_url ? (openqa_url => $openqa_url) : ()), state_dir => IGTest::tempdir(CLEANUP => 1),
        # the coverage policy of the "testing is finished" scenarios; each its own VERSION so that
        # the other scenarios (15-SP6) are not affected
        coverage => join(', ', 'sle/15-SP7/*-Incidents/x86_64: tests=mau-extratests|qam-minimal|mau-webserver',
            'sle/15-SP8/*-Incidents/x86_64: flavors=Server-DVD-Incidents|Desktop-DVD-Incidents',
            'sle/15-SP9/*-Incidents/x86_64: aggregate'),
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

# The incident.done messages of one incident.
sub done_messages ($self, $incident) {
    grep { ($_->{json}{incident} // -1) == $incident } $self->openqa_messages('incident.done');
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
            my ($first) = incident_job($oq, $i, $rr, 'mau-extratests');
            $oq->set_done($first, 'failed');
            my @m = $w->await_done($i);
            is $m[0]{json}{result}, 'failed', 'failed on the first build' or return;
            # openQA schedules the same scenario again (not a restart): the newer job replaces it
            my ($again) = incident_job($oq, $i, $rr, 'mau-extratests');
            my $new_agg = $oq->create_job(TEST => 'mau-aggregate', BUILD => '20261129-1', %agg);
            $oq->set_done($again, 'passed');
            $oq->set_done($new_agg, 'passed');
            @m = $w->await_done($i, 2);
            ok @m >= 2, 'a new decision' or return;
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

# The plugin inside a real openQA web UI (`openqa daemon`, or prefork with $workers workers): every
# scenario, decided from openQA's own in-process events.
sub plugin_suite (%o) {
    my $w = new_world(base => $o{base});
    my $oq = IGTest::RealOpenQA->start(workers => $o{workers}, plugin => 1, exchange => $w->{exchange},
        prefix => $w->{prefix}, ini => {incident_gate => {library => library(), %{$w->gate_section(undef)}}});
    ok((grep { /IncidentGate: libincident_gate/ } $oq->log_lines), 'openQA loaded the plugin')
      or diag join "\n", $oq->log_lines;
    run_scenarios($w, $oq);
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
        ok((grep { /\[info\].*IncidentGate: incident \d+: (passed|failed)/ } $oq->log_lines),
            "the engine's decisions are in openQA's log") or diag join "\n", $oq->log_lines;
    };
    is_deeply [$oq->alarming_lines], [], 'openQA logged no errors';
}

# Runs every scenario as a subtest, numbering incidents from the world's base; then checks that
# openQA itself stayed healthy.
sub run_scenarios ($w, $oq, %o) {
    my $n = $w->{base};
    for my $s (@SCENARIOS) {
        my ($name, $code) = @$s;
        $n += 10;
        next if $o{skip} && $name =~ $o{skip};
        subtest $name => sub { $code->($w, $oq, $n) };
    }
}

1;
