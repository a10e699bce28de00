#!/usr/bin/perl
# The benchmark against a real openQA web UI (Debian's `openqa`, scripts/real-openqa): two instances
# side by side in one run, one with the IncidentGate plugin and one without, the same requests
# alternating between them. Prints Markdown for docs/performance.md:
#   - what the plugin adds to `POST /api/v1/jobs/<id>/set_done` (median, p99),
#   - last set_done -> `incident.done` consumed from RabbitMQ (median, p99),
#   - openQA requests the library made per decision,
#   - the resident memory of both web UI processes, after warm-up and after the run.
#   - decisions lost or duplicated: incidents with no `incident.done`, messages beyond one per incident,
#     and the decisions recorded in the state directory every process shares (the metrics route),
# Usage (scripts/bench runs it): IG_LIBRARY=... IG_BIN=... perl perl/bench/real-openqa.pl [incidents] [jobs] [workers]
# workers: 0 (default) runs `openqa daemon`, one process; N runs `openqa prefork` with N workers as
# openQA's service does (`-c 1`), where the library's requests are answered by other workers.
use v5.20;
use warnings;
use feature "signatures";
no warnings "experimental::signatures";
use FindBin;
use lib "$FindBin::Bin/../t/lib", "$FindBin::Bin/../lib";
use IGTest qw(library);
use IGTest::RealOpenQA;
use IGTest::Scenarios qw(new_world);
use Mojo::JSON 'decode_json';
use Time::HiRes qw(time);

my ($incidents, $per, $workers) = (shift // 100, shift // 5, shift // 0);
my $w = new_world(base => 50000);
# openQA's own AMQP plugin is left out of both: Debian 12's keeps one broker connection per event
# it published, and thousands of events exhaust the broker's file descriptors
my $with = IGTest::RealOpenQA->start(workers => $workers, plugin => 1, amqp => 0, exchange => $w->{exchange}, prefix => $w->{prefix},
    ini => {incident_gate => {library => library(), %{$w->gate_section(undef)}}});
my $without = IGTest::RealOpenQA->start(workers => $workers, amqp => 0, exchange => $w->{exchange}, prefix => "$w->{prefix}-plain");
# IG_LIBRARY_BEFORE: a third instance with another build of the library (an earlier commit), its own
# incidents (numbered 20000 higher) alternating with the others: before and after in one run
my $before_lib = $ENV{IG_LIBRARY_BEFORE};
my $earlier = $before_lib && IGTest::RealOpenQA->start(workers => $workers, plugin => 1, amqp => 0, exchange => $w->{exchange},
    prefix => "$w->{prefix}-before", ini => {incident_gate => {library => $before_lib, %{$w->gate_section(undef)}}});
use constant EARLIER => 20000;

sub pct {
    my ($p, $v) = @_;
    my @s = sort { $a <=> $b } @$v;
    return $s[int(($#s) * $p / 100 + 0.5)];
}
sub ms { sprintf '%.2f ms', $_[0] * 1000 }

# the engine's counters are for operators (the Demo user of the fake login is one)
sub status ($oq) { $oq->api(GET => '/api/v1/incident_gate/internals')->{engine} // {} }

# every incident's release request is in review: each pass is an accept on IBS, the irreversible
# action the library checks against openQA once more right before it
sub jobs ($oq, $i) {
    $w->release_request(400000 + $i);
    my $g = IGTest::Scenarios::incidents_group($oq);
    map {
        $oq->create_job(TEST => "t$_", BUILD => ":$i:pkg", INCIDENT_ID => $i, RRID => "SUSE:Maintenance:$i:" . (400000 + $i),
            _GROUP_ID => $g)
    } 1 .. $per;
}

# resident memory of the web UI: the process, and its prefork workers if any (MiB)
sub rss ($oq) {
    my $total = 0;
    for my $pid ($oq->{pid}, $oq->workers) {
        open my $fh, '<', "/proc/$pid/status" or next;
        my ($kb) = join('', <$fh>) =~ /^VmRSS:\s+(\d+)/m;
        $total += ($kb // 0) / 1024;
    }
    return $total;
}

sub timed_done ($oq, $id) {
    my $t0 = time;
    $oq->set_done($id, 'passed');
    return time - $t0;
}

# The plugin's metrics (/admin/influxdb/incident_gate, from the state directory all workers
# share): the line without kind or sink tag, and the decisions summed over kinds and results.
sub metrics ($oq) {
    my %m = (decisions => 0);
    for my $line (split /\n/, $oq->ua->get($oq->url . '/admin/influxdb/incident_gate')->result->body) {
        my ($tags, $fields) = $line =~ /^incident_gate,url=\S+?((?:,\w+=\w+)*) (\S+)$/ or next;
        my %f = map { /^(\w+)=(-?\d+)i$/ } split /,/, $fields;
        if ($tags =~ /kind=/) { $m{decisions} += $f{decisions} // 0 }
        elsif (!$tags) { %m = (%m, %f) }
    }
    return \%m;
}

# every incident.done seen, by incident: event ids (the decision keys) and how often each came
my %done;
sub note_done ($m) {
    my $j = eval { decode_json($m->{body}) } // {};
    return undef unless $m->{routing_key} =~ /incident\.done$/ && $j->{incident};
    $done{$j->{incident}}{$j->{event_id} // ''}++;
    return $j->{incident};
}
sub loadavg { open my $fh, '<', '/proc/loadavg' or return '?'; (split ' ', <$fh>)[0] }
my $load_before = loadavg();

# warm both instances (database caches, the library's engine start in the plugin's worker)
for my $oq ($with, $without) { timed_done($oq, $_) for jobs($oq, 49999) }
if ($earlier) { timed_done($earlier, $_) for jobs($earlier, 49999 + EARLIER) }
$w->await_done(49999, 1, 30) or die "no decision during warm-up\n";
note_done($_) for $w->openqa_messages('incident.done');
my $before = status($with);
my $earlier_before = $earlier && status($earlier);
my $metrics_before = metrics($with);
my %rss_before = (with => rss($with), without => rss($without));

# the last job: wait for the incident's decision on the broker, polling without pause
sub await_decision ($i, $t0) {
    my $deadline = $t0 + 30;
    while (time < $deadline) {
        my $m = $w->{amqp}->get(1, 0) or next;
        return time - $t0 if (note_done($m) // 0) == $i;
    }
    die "no incident.done for $i within 30 s\n";
}

my (@cost_with, @cost_without, @latency, @latency_earlier);
for my $k (1 .. $incidents) {
    my $i = 50000 + $k;
    my @a = jobs($with, $i);
    my @b = jobs($without, $i);
    my @e = $earlier ? jobs($earlier, $i + EARLIER) : ();
    for my $n (0 .. $#a) {
        push @cost_without, timed_done($without, $b[$n]);
        if ($earlier) {
            my $t0 = time;
            timed_done($earlier, $e[$n]);
            push @latency_earlier, await_decision($i + EARLIER, $t0) if $n == $#a;
        }
        my $t0 = time;
        push @cost_with, timed_done($with, $a[$n]);
        next unless $n == $#a;
        # the last job: wait for the incident's decision on the broker, polling without pause
        my $deadline = $t0 + 30;
        my $got;
        while (!$got && time < $deadline) {
            my $m = $w->{amqp}->get(1, 0) or next;
            $got = (note_done($m) // 0) == $i;
        }
        die "no incident.done for $i within 30 s\n" unless $got;
        push @latency, time - $t0;
    }
}
# the IBS reports (and the checks right before each accept) go on after incident.done
for my $oq (grep {$_} $with, $earlier) {
    my $last = 400000 + 50000 + $incidents + ($oq == $with ? 0 : EARLIER);
    $w->await_review($last, 'accepted', 60) or die "the last review (request $last) was not accepted\n";
}
# late or repeated messages: drained until none came for 3 s
while (my @late = $w->{amqp}->get_all(3)) { note_done($_) for @late }
my $load_after = loadavg();
my $metrics_after = metrics($with);
my @incidents = (49999, map { 50000 + $_ } 1 .. $incidents);
my $lost = grep { !$done{$_} } @incidents;
my $messages = 0;
$messages += $_ for map { values %$_ } values %done;
my $duplicated = $messages - keys %done;
my $stored = $metrics_after->{decisions};
my $after = status($with);
my $earlier_after = $earlier && status($earlier);
my %rss_after = (with => rss($with), without => rss($without));
my $decisions = ($after->{decisions} // 0) - ($before->{decisions} // 0);
my $requests = ($after->{openqa_requests} // 0) - ($before->{openqa_requests} // 0);

my ($mw, $mo) = (pct(50, \@cost_with), pct(50, \@cost_without));
say '## Against a real openQA web UI (Debian 12 `openqa`, ',
  ($workers ? "`openqa prefork` with $workers workers" : 'one `openqa daemon`'), " each)\n";
say "$incidents incidents x $per jobs; each job's `set_done` alternates between the instance with the plugin and";
say "the one without. Times are the client's, on loopback.\n";
say '| measure | median | p99 |';
say '| --- | --- | --- |';
say '| `set_done` without the plugin | ', ms($mo), ' | ', ms(pct(99, \@cost_without)), ' |';
say '| `set_done` with the plugin | ', ms($mw), ' | ', ms(pct(99, \@cost_with)), ' |';
say '| plugin cost on `set_done` | ', sprintf('%+.1f %%', 100 * ($mw - $mo) / $mo), ' | ',
  sprintf('%+.1f %%', 100 * (pct(99, \@cost_with) - pct(99, \@cost_without)) / pct(99, \@cost_without)), ' |';
say '| last `set_done` sent -> `incident.done` consumed | ', ms(pct(50, \@latency)), ' | ', ms(pct(99, \@latency)), ' |';
say '';
if ($workers) {
    # each worker counts its own openQA requests; the evaluations counter is the state directory's
    my $evaluations = ($metrics_after->{evaluations} // 0) - ($metrics_before->{evaluations} // 0);
    say "Evaluations by all $workers workers: $evaluations for ", $stored - $metrics_before->{decisions},
      ' decisions (the openQA requests of the one worker that answered the status: ', $requests, ').';
}
else {
    say "openQA requests by the library: $requests for $decisions decisions (", sprintf('%.2f', $requests / ($decisions || 1)),
      ' per decision, ', ($after->{rechecks} // 0) - ($before->{rechecks} // 0), ' checks right before an accept).';
}
if ($earlier && !$workers) {
    my $d = ($earlier_after->{decisions} // 0) - ($earlier_before->{decisions} // 0);
    my $r = ($earlier_after->{openqa_requests} // 0) - ($earlier_before->{openqa_requests} // 0);
    say '';
    say "Side by side in this run, the library of `IG_LIBRARY_BEFORE` ($before_lib), every pass accepted on IBS:\n";
    say '| library | last `set_done` -> `incident.done` median | p99 | openQA requests per decision |';
    say '| --- | --- | --- | --- |';
    say sprintf('| before | %s | %s | %.2f |', ms(pct(50, \@latency_earlier)), ms(pct(99, \@latency_earlier)), $r / ($d || 1));
    say sprintf('| this build | %s | %s | %.2f |', ms(pct(50, \@latency)), ms(pct(99, \@latency)), $requests / ($decisions || 1));
}
say '';
say 'Decisions: ', scalar @incidents, " incidents (with the warm-up's), $stored recorded in the state directory, ",
  "$messages `incident.done` messages with ", scalar(map { keys %$_ } values %done), ' distinct event ids; ',
  "lost $lost, duplicated $duplicated.";
say "Load average of the machine (2 cores, shared): $load_before before, $load_after after.";
say '';
say '| resident memory of the web UI', ($workers ? ' (manager and workers)' : ' process'), ' | after warm-up | after the run |';
say '| --- | --- | --- |';
say sprintf('| %s | %.0f MiB | %.0f MiB |', $_->[0], $rss_before{$_->[1]}, $rss_after{$_->[1]})
  for ['with the plugin', 'with'], ['without the plugin', 'without'];
