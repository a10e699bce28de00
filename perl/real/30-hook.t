# `incident-gate hook` as openQA's GRU runs a job-done hook (openQA without our plugin). A hook only
# runs when a job finishes: comments, cancellations and force_result never reach it.
use v5.20;
use warnings;
use Test::More;
use feature "signatures";
no warnings "experimental::signatures";
use FindBin;
use lib "$FindBin::Bin/../t/lib", "$FindBin::Bin/../lib";
use IGTest qw(bin write_ini);
use Mojo::File;
use IGTest::RealOpenQA;
use IGTest::Scenarios qw(new_world run_scenarios incident_job);
use Mojo::JSON qw(decode_json);

my $w = new_world(base => 30000);
# the hook reads its configuration when openQA runs it: written once openQA's URL is known
my $ini = IGTest::tempdir(CLEANUP => 1) . '/openqa.ini';
my $hook = join ' ', bin(), 'hook', '--config', $ini;
my $oq = IGTest::RealOpenQA->start(exchange => $w->{exchange}, prefix => $w->{prefix}, gru => 1,
    ini => {hooks => {map { ("job_done_hook_$_" => $hook) } qw(passed softfailed failed incomplete)}});
Mojo::File::path($ini)->spurt(Mojo::File::path(write_ini({incident_gate => $w->gate_section($oq->url)}))->slurp);

run_scenarios($w, $oq, skip => qr/acceptable_for|force_result|cancelled/);

sub ibs_down ($on) { $w->sim->ua->post("$w->{sim}{obs}/_sim/down?on=$on")->result->is_success or die "IBS sim down=$on" }

# openQA's GRU has run every hook it was given (its own metrics route, public on 4.6 and upstream)
sub gru_idle () {
    $w->await(sub {
        my ($jobs) = grep { /^openqa_minion_jobs/ } split /\n/, $oq->ua->get($oq->url . '/admin/influxdb/minion')->result->body;
        ($jobs // '') =~ /[ ,]active=0i/ && $jobs =~ /[ ,]inactive=0i/;
    }, 60);
}

# What the state directory says of an incident's IBS report: (state, outcome).
sub ibs_delivery ($incident) {
    my $json = decode_json(scalar qx{@{[IGTest::bin()]} status --json --config $ini 2>/dev/null} || '{}');
    for my $d (@{$json->{recent_decisions} // []}) {
        next unless $d->{incident} == $incident;
        my ($obs) = grep { $_->{sink} eq 'obs' } @{$d->{deliveries}};
        return ($obs->{state}, $obs->{outcome} // '') if $obs;
    }
    return ('none', '');
}

# Issue 20, point 3: a hook hears no restart. The approval IBS did not take (down) must not be
# delivered by the next hook run, of an unrelated job, while the clone runs.
subtest 'hook: an approval held up by IBS is withheld once a job was restarted' => sub {
    # without catch-up, which would notice the restart at the next hook's start: the check right
    # before the accept is what must find it
    Mojo::File::path($ini)->spurt(Mojo::File::path(write_ini({incident_gate =>
        $w->gate_section($oq->url, catchup_max_requests => 0)}))->slurp);
    my ($i, $rr) = (30901, 330901);
    $w->release_request($rr);
    $w->release_request($rr + 1);
    ibs_down(1);
    my @jobs = map { incident_job($oq, $i, $rr, $_) } qw(mau-extratests qam-minimal);
    $oq->set_done($_, 'passed') for @jobs;
    my @m = $w->await_done($i);
    is $m[0]{json}{result}, 'passed', 'passed, published' or return;
    ok gru_idle(), 'the hooks of both jobs ran';
    my $clone = $oq->restart($jobs[0]);
    ibs_down(0);
    my ($other) = incident_job($oq, $i + 1, $rr + 1, 'unrelated');
    $oq->set_done($other, 'passed');
    ok $w->await_review($rr + 1, 'accepted'), "the unrelated job's hook reported to IBS";
    my $withheld = $w->await(sub { my ($s, $o) = ibs_delivery($i); $s eq 'final' ? $o : undef }, 60);
    like $withheld, qr/withheld/, 'the held approval was withheld' or diag $withheld;
    is $w->review_state($rr), 'new', 'and the review not accepted while the clone runs';
    $oq->set_done($clone, 'passed');
    ok $w->await_review($rr, 'accepted'), 'accepted once the clone passed';
};

is_deeply [$oq->alarming_lines], [], 'openQA logged no errors';
diag Mojo::File::path($oq->{gru_log})->slurp if !Test::More->builder->is_passing && -e $oq->{gru_log};
done_testing;
