# openQA 4.6 (Debian 12) finds an incident's own jobs only with `list_value`, which searches the
# newest `job_settings_max_recent_jobs` jobs. Issue 20, point 1, reproduced with a small window: an
# old failure outside it, a restarted failure whose clone passed, and a Devel job of the incident
# still scheduled (which does not count) — the incident fails on the old job, never passes.
use v5.20;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../t/lib", "$FindBin::Bin/../lib";
use IGTest qw(library);
use IGTest::RealOpenQA;
use IGTest::Scenarios qw(new_world incident_job group);

my $w = new_world(base => 14000);
my $oq = IGTest::RealOpenQA->start(plugin => 1, exchange => $w->{exchange}, prefix => $w->{prefix},
    ini => {incident_gate => {library => library(), %{$w->gate_section(undef)}},
        misc_limits => {job_settings_max_recent_jobs => 10}});
ok((grep { /IncidentGate: libincident_gate/ } $oq->log_lines), 'openQA loaded the plugin');

my ($i, $rr) = (14010, 314010);
$w->release_request($rr);
my $old = incident_job($oq, $i, $rr, 'mau-extratests');
$oq->set_done($old, 'failed');
my @m = $w->await_done($i);
is $m[0]{json}{result}, 'failed', 'the old job fails the incident first';
# more than the window of other jobs: the old failure drops out of what list_value searches
$oq->create_job(TEST => "other-$_", BUILD => ':99999:other', _GROUP_ID => group($oq, 'Other')) for 1 .. 12;
my $b = incident_job($oq, $i, $rr, 'qam-minimal');
my $devel = incident_job($oq, $i, $rr, 'qam-devel', _GROUP_ID => group($oq, 'Maintenance: SLE 15 SP6 Devel'));
my $listed = $oq->api(GET => "/api/v1/job_settings/jobs?key=INCIDENT_ID&list_value=$i")->{jobs};
ok !(grep { $_ == $old } @$listed), 'openQA no longer lists the old failure by INCIDENT_ID';
$oq->set_done($b, 'failed');
@m = $w->await_done($i, 2);
my $clone = $oq->restart($b);
$oq->set_done($clone, 'passed');
# the Devel job stays scheduled: it does not count, and must not keep the old failure out of view
my $last = $w->await(sub { my @d = $w->done_messages($i); @d >= 3 ? $d[-1] : undef });
ok $last, 'a decision follows the clone';
is $last->{json}{result}, 'failed', 'the incident still fails';
is_deeply [map { $_->{id} } @{$last->{json}{blocking}}], [$old], 'on the old job';
is $w->review_state($rr), 'new', 'the review is not accepted';
is $oq->job($devel)->{state}, 'scheduled', 'while the Devel job was still scheduled';

is_deeply [$oq->alarming_lines], [], 'openQA logged no errors';
done_testing;
