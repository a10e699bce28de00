# `incident-gate hook` as openQA's GRU runs a job-done hook (openQA without our plugin). A hook only
# runs when a job finishes: comments, cancellations and force_result never reach it.
use v5.20;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../t/lib", "$FindBin::Bin/../lib";
use IGTest qw(bin write_ini);
use Mojo::File;
use IGTest::RealOpenQA;
use IGTest::Scenarios qw(new_world run_scenarios);

my $w = new_world(base => 30000);
# the hook reads its configuration when openQA runs it: written once openQA's URL is known
my $ini = IGTest::tempdir(CLEANUP => 1) . '/openqa.ini';
my $hook = join ' ', bin(), 'hook', '--config', $ini;
my $oq = IGTest::RealOpenQA->start(exchange => $w->{exchange}, prefix => $w->{prefix}, gru => 1,
    ini => {hooks => {map { ("job_done_hook_$_" => $hook) } qw(passed softfailed failed incomplete)}});
Mojo::File::path($ini)->spurt(Mojo::File::path(write_ini({incident_gate => $w->gate_section($oq->url)}))->slurp);

run_scenarios($w, $oq, skip => qr/acceptable_for|force_result|cancelled/);

is_deeply [$oq->alarming_lines], [], 'openQA logged no errors';
diag Mojo::File::path($oq->{gru_log})->slurp if !Test::More->builder->is_passing && -e $oq->{gru_log};
done_testing;
